"""`python -m tests.bench` (what `nox -s bench` runs); `--help` lists the options."""

import sys

from .run import main

sys.exit(main())
