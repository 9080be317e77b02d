"""``webui [MODEL]``: chat with a YuRen model (or, with no MODEL, the built-in demo model) in the browser.

Examples::

    webui                                   # the small demo model, built on first use
    webui dist/yuren-7b-stage3 --load_8bit True
    webui dist/yuren-7b-stage3-8bit         # written once by `quantize MODEL --bits 8 --output DIR`
    webui pleisto/yuren-baichuan-7b --server_name 0.0.0.0 --auth-file ~/.config/yuren/webui-auth
    webui --api_base http://127.0.0.1:8000/v1   # the UI over `vllm serve` (or any OpenAI-compatible server)

Credentials: ``--auth-file FILE`` (one line ``USER:PASS``, readable only by you)
or the ``YUREN_WEBUI_AUTH=USER:PASS`` environment variable. ``--auth USER:PASS``
also works but shows the password to every user of the machine (``ps``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

# Light imports only until the exposure check has passed: refusing to start must be immediate.
from yuren_core.cli import fail

from .auth import (
    ARGV_AUTH_WARNING,
    AUTH_ENV,
    MIN_PASSWORD_LENGTH,
    CredentialsError,
    ExposureRefused,
    auth_file_is_private,
    check_exposure,
    resolve_credentials,
)
from .compute import short_spin_environment
from .hosts import parse_proxy
from .languages import LANGUAGES
from .server_limits import MAX_SESSIONS, UPLOAD_RATE, UPLOAD_STORAGE


def str2bool(value: str) -> bool:
    """Parse a command-line boolean: True/False, yes/no, 1/0, on/off (any case)."""
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def size_argument(value: str) -> str:
    """A size such as ``200mb`` or ``2gb`` (units b, kb, mb, gb, tb), checked and returned as given."""
    if not re.fullmatch(r"\s*[1-9]\d{0,15}\s*(?:b|kb|mb|gb|tb)\s*", value, flags=re.IGNORECASE):
        raise argparse.ArgumentTypeError(f"expected a size such as 200mb or 2gb, got {value!r}")
    return value


def proxy_argument(value: str) -> str:
    """A ``--trusted_proxy`` address or network, checked."""
    try:
        return parse_proxy(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address or network (such as 127.0.0.1 or 10.0.0.0/8), got {value!r}"
        ) from None


def model_path_problem(model: str) -> str | None:
    """Why ``model`` names no loadable model (a missing or config-less directory), or ``None``.

    A name that is no local directory but has a hub id's form (``org/repo``) is left to the loader.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    path = Path(model)
    if path.is_dir():
        return None if (path / "config.json").is_file() else "the directory holds no config.json"
    try:
        validate_repo_id(model)
    except HFValidationError:
        return "no such directory"
    return None


def default_cache_dir() -> Path:
    """Where the demo model is kept: ``$XDG_CACHE_HOME/yuren/demo`` (``~/.cache/yuren/demo``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "yuren" / "demo"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webui", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="a YuRen checkpoint: local directory or Hugging Face hub id (default: the built-in demo model); "
        "with --api_base, the name of the served model (default: the first the server lists)",
    )
    parser.add_argument(
        "--api_base",
        default=None,
        metavar="URL",
        help="answer through this OpenAI-compatible server (e.g. http://127.0.0.1:8000/v1) instead of loading a model",
    )
    parser.add_argument(
        "--api_key_file",
        type=Path,
        default=None,
        metavar="FILE",
        help="file holding the API key for --api_base (a file, so the key stays out of `ps` and shell history)",
    )
    parser.add_argument(
        "--image_position",
        choices=("before_text", "after_text"),
        default="before_text",
        help="with --api_base: where the served model saw images in training (its config's image_position)",
    )
    parser.add_argument(
        "--load_8bit",
        type=str2bool,
        default=False,
        metavar="True|False",
        help="quantize the language model to 8 bits with bitsandbytes",
    )
    parser.add_argument(
        "--load_4bit",
        type=str2bool,
        default=False,
        metavar="True|False",
        help="quantize the language model to 4 bits (NF4) with bitsandbytes",
    )
    parser.add_argument(
        "--compile",
        type=str2bool,
        default=False,
        metavar="True|False",
        help="decode on a static KV cache with torch.compile (compiles on the first answers; pays on a GPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="CPU threads for the model's work (default: torch's, one per core). On a machine shared with other "
        "busy programs, fewer threads than cores keep decoding steady (see benchmarks/README.md)",
    )
    parser.add_argument(
        "--server_name", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--server_port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument(
        "--share",
        type=str2bool,
        default=False,
        metavar="True|False",
        help="also publish a temporary public gradio.live link (needs --auth)",
    )
    parser.add_argument(
        "--auth-file",
        "--auth_file",
        dest="auth_file",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"require the user name and password in FILE (one line USER:PASS; password at least "
        f"{MIN_PASSWORD_LENGTH} characters); or set {AUTH_ENV}=USER:PASS",
    )
    parser.add_argument(
        "--auth",
        default=None,
        metavar="USER:PASS",
        help="as --auth-file, but every user of this machine can read the password in the process list",
    )
    parser.add_argument(
        "--allow-unauthenticated-public",
        "--allow_unauthenticated_public",
        action="store_true",
        dest="allow_unauthenticated_public",
        help="serve on a non-loopback address or share link without --auth (anyone can use it)",
    )
    parser.add_argument(
        "--trusted_proxy",
        action="append",
        type=proxy_argument,
        default=[],
        metavar="ADDR",
        help="a reverse proxy (address or network; repeat for more) whose X-Forwarded-For names the client. "
        "Default: none; every request's client is the address it came from",
    )
    parser.add_argument(
        "--allowed_host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name users reach the UI by (repeat for more); besides --server_name and localhost, requests "
        "naming another host are refused (DNS rebinding). A server on 0.0.0.0 without it answers to any name",
    )
    parser.add_argument(
        "--max_sessions",
        type=int,
        default=MAX_SESSIONS,
        metavar="N",
        help=f"conversations kept in memory; past it the least recently used is forgotten (default {MAX_SESSIONS})",
    )
    parser.add_argument(
        "--upload_rate",
        type=size_argument,
        default=UPLOAD_RATE,
        metavar="SIZE",
        help=f"most one client address may upload per minute (default {UPLOAD_RATE})",
    )
    parser.add_argument(
        "--upload_storage",
        type=size_argument,
        default=UPLOAD_STORAGE,
        metavar="SIZE",
        help=f"most all uploads together may keep on disk; past it the oldest are deleted "
        f"(default {UPLOAD_STORAGE}; uploads older than a day are deleted anyway)",
    )
    parser.add_argument("--lang", choices=LANGUAGES, default="zh", help="UI language (default zh)")
    parser.add_argument(
        "--demo_cache_dir",
        type=Path,
        default=None,
        help="where the demo model is built and cached (default ~/.cache/yuren/demo)",
    )
    return parser


def start_openmp_with_a_short_spin() -> None:
    """Set :func:`webui.compute.short_spin_environment` for this process, if torch (and OpenMP) is not loaded yet.

    OpenMP reads its settings once, when torch loads it; later changes would not apply.
    """
    if "torch" in sys.modules:
        return
    spin = short_spin_environment(os.environ)
    os.environ.update(spin)
    if spin:
        logging.getLogger("webui").info(
            "OpenMP helper threads spin briefly, then sleep (%s; set GOMP_SPINCOUNT or OMP_WAIT_POLICY to choose)",
            ", ".join(f"{name}={value}" for name, value in spin.items()),
        )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("webui").setLevel(logging.INFO)
    if args.load_8bit and args.load_4bit:
        build_parser().error("choose one of --load_8bit True and --load_4bit True, not both")
    if args.api_key_file and not args.api_base:
        build_parser().error("--api_key_file needs --api_base")
    if args.api_base and (args.load_8bit or args.load_4bit):
        build_parser().error("--load_8bit/--load_4bit load a model here; with --api_base the server holds it")
    try:
        auth = resolve_credentials(argv_auth=args.auth, auth_file=args.auth_file)
        # Before torch, Gradio and the model are loaded: refusing to start should be immediate.
        check_exposure(
            args.server_name,
            share=args.share,
            auth=auth,
            allow_unauthenticated_public=args.allow_unauthenticated_public,
        )
    except (CredentialsError, ExposureRefused) as error:
        fail("webui", str(error))
    if args.auth is not None:
        print(f"webui: warning: {ARGV_AUTH_WARNING}", file=sys.stderr)
    if args.auth_file is not None and not auth_file_is_private(args.auth_file):
        print(f"webui: warning: {args.auth_file} can be read by other users; chmod 600 it", file=sys.stderr)

    if args.api_base:
        serve_remote(args, auth)
        return
    demo = args.model is None
    if demo:
        from .demo import DemoUnavailable, ensure_demo_model

        try:
            model_path = ensure_demo_model(args.demo_cache_dir or default_cache_dir())
        except DemoUnavailable as error:
            fail("webui", str(error))
    else:
        model_path = args.model
        problem = model_path_problem(model_path)
        if problem:
            build_parser().error(
                f"{model_path}: {problem}; pass a YuRen checkpoint directory (stage 3's --output_dir) "
                "or a hub id such as pleisto/yuren-baichuan-7b"
            )
    # Here, not earlier: the demo builder (a process of its own) keeps the user's environment.
    start_openmp_with_a_short_spin()
    from .engine import ModelBackend

    try:
        backend = ModelBackend.from_pretrained(
            model_path,
            load_8bit=args.load_8bit,
            load_4bit=args.load_4bit,
            compile=args.compile,
            threads=args.threads,
        )
    except (OSError, ValueError) as error:
        # transformers' message names the model and what it looked for (a missing hub repo, a folder without config);
        # the loader's names the checkpoint file or config field to fix (a missing vision tower, a wrong-shape weight).
        fail("webui", str(error))
    local = Path(model_path)
    # A local directory is named, not located: the page need not reveal the server's file layout.
    name = "demo" if demo else local.name if local.exists() else str(args.model)
    serve_backend(args, auth, backend, model_name=name, demo=demo, blocked_paths=[local] if local.exists() else [])


def serve_backend(
    args: argparse.Namespace,
    auth: tuple[str, str] | None,
    backend,
    *,
    model_name: str,
    demo: bool = False,
    blocked_paths: list[Path] | None = None,
) -> None:
    """Build the UI over ``backend`` and serve it as the command-line flags say, behind ``auth`` if given."""
    from .app import Limits, build_app
    from .server import serve

    limits = Limits(max_sessions=args.max_sessions, upload_rate=args.upload_rate, upload_storage=args.upload_storage)
    app = build_app(backend, lang=args.lang, limits=limits, model_name=model_name, demo=demo)
    serve(
        app,
        limits=limits,
        server_name=args.server_name,
        server_port=args.server_port,
        share=args.share,
        auth=auth,
        allow_unauthenticated_public=args.allow_unauthenticated_public,
        blocked_paths=blocked_paths or [],
        lang=args.lang,
        trusted_proxies=args.trusted_proxy,
        allowed_hosts=args.allowed_host,
    )


def serve_remote(args: argparse.Namespace, auth: tuple[str, str] | None) -> None:
    """Serve the UI over the OpenAI-compatible server ``args.api_base``, behind ``auth`` if given."""
    from .openai_backend import OpenAIBackend, ServerError

    api_key = None
    if args.api_key_file:
        try:
            api_key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as error:
            fail("webui", f"cannot read --api_key_file {args.api_key_file}: {error.strerror}")
    try:
        backend = OpenAIBackend(args.api_base, api_key=api_key, model=args.model, image_position=args.image_position)
    except ServerError as error:
        fail("webui", f"cannot reach the server at {args.api_base}: {error}")
    if backend.cannot_count_tokens:
        print(
            f"webui: warning: history goes to {args.api_base} whole, never shortened to fit the model's context: "
            f"{backend.cannot_count_tokens}. A conversation that outgrows the context is refused by the server.",
            file=sys.stderr,
        )
    serve_backend(args, auth, backend, model_name=backend.model)


if __name__ == "__main__":
    main()
