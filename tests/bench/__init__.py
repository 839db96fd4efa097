"""Benchmarks (`nox -s bench`): fluidity against a direct connection. Not part of the tests.

Modules here are run as programs (`python -m tests.bench`, `python -m tests.bench.origin`,
`python -m tests.bench.loadgen`, `python -m tests.bench.delayline`); pytest collects only
test_delayline.py, the delay line's own test, which is quick.
"""
