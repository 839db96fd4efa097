"""Benchmarks (`nox -s bench`): fluidity against a direct connection. Not part of the tests.

Modules here are run as programs (`python -m tests.bench`, `python -m tests.bench.origin`,
`python -m tests.bench.loadgen`); none is named test_*.py, so pytest never collects them.
"""
