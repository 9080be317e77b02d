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

import torch

# A torch dtype by name, or "auto" for the one the checkpoint was saved in.
DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


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
