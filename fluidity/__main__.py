"""``python -m fluidity``: the ``fluidity`` command."""

from fluidity.cli import main

main()
