"""``python -m fluidity.agent``."""

from .cli import main

main()
