"""``python -m fluidity.server``."""

from .cli import main

main()
