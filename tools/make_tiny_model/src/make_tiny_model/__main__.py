"""``python -m make_tiny_model``: the ``make-tiny-model`` command."""

from .tiny_model import main

main()
