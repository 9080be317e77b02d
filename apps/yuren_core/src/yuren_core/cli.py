"""What YuRen's commands share: the dtypes ``--dtype`` may name, and how an error the user can act on ends them.

Such an error prints ``PROG: error: MESSAGE`` and exits with status 2, as
argparse itself does for a bad flag, so every mistake a user can fix ends the
same way, with no traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

# The dtypes ``--dtype`` may name; "auto" keeps the one the checkpoint was saved in.
DTYPES = ("auto", "bfloat16", "float16", "float32")


def torch_dtype(name: str):
    """The torch dtype ``--dtype NAME`` means (``"auto"`` stays ``"auto"``).

    torch is imported here, not with the module: a command that fails on its
    flags, or talks to a server, should not pay for loading it.
    """
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    if name == "auto":
        return "auto"
    import torch

    return getattr(torch, name)


def fail(prog: str, message: str) -> NoReturn:
    """Print ``PROG: error: MESSAGE`` to stderr and exit with status 2."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2) from None


@contextmanager
def exit_on(prog: str, *errors: type[Exception]) -> Iterator[None]:
    """Within the block, any of ``errors`` ends the program through :func:`fail` with its message."""
    try:
        yield
    except errors as error:
        fail(prog, str(error))
