"""What every test gets: a time cap, so a hang fails the test that hung instead of the CI run.

Two layers, both set by one number, pytest-timeout's (`timeout` in pyproject.toml, or
`@pytest.mark.timeout(N)` on a test or, through a hook, a directory: tests/e2e has its own):

* Every trio test body runs under `tests.support.timecap.capped`, on the test's own clock:
  three quarters of that number in seconds, or `VIRTUAL_CAP` virtual seconds under an
  autojump clock (a hung autojump test jumps straight there and fails at once). It fails the
  test with where every task was waiting, and the fixtures tear down as usual.
* pytest-timeout itself is the backstop, for synchronous tests, fixture set-up and teardown,
  and waits a cancellation cannot reach (a shielded scope, a thread). Synchronous tests use
  method "signal" (pyproject.toml): SIGALRM fails the test with its stack and the session
  goes on. Trio tests use method "thread" (set below): a signal raised inside trio's run loop
  would leave trio's state broken for every later test, so a trio test that outlives even
  its cancellation ends the run with every thread's stack, which names the hang.

`--timeout=0` turns both off (for a debugger).

The PKI that `fluidity certs init` makes is shared by the whole session (tests.support.pki).

Hypothesis runs without its per-example deadline: on a loaded machine an example of a codec
test took longer than 200 ms and failed a correct test; the time cap above bounds the whole.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Generator
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

from tests.support.pki import Pki, make_pki
from tests.support.timecap import capped

hypothesis_settings.register_profile("fluidity", deadline=None)
hypothesis_settings.load_profile("fluidity")

#: The part of pytest-timeout's limit the trio cap takes; the rest is for teardown.
TRIO_SHARE = 0.75


def backstop_seconds(item: pytest.Item) -> float:
    """pytest-timeout's limit for `item`: its marker, else --timeout, else the ini value."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout", 0)
    else:
        value = item.config.getoption("timeout", None)
        if value is None:
            value = item.config.getini("timeout") or 0
    return float(value or 0)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """pytest-timeout's "thread" method for trio tests (after pytest-trio marked them)."""
    for item in items:
        if item.get_closest_marker("trio") is not None:
            seconds = backstop_seconds(item)
            item.add_marker(pytest.mark.timeout(seconds, method="thread"), append=False)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Cap every trio test (before pytest-trio, a later hook, wraps it in trio.run)."""
    seconds = backstop_seconds(item) * TRIO_SHARE
    if isinstance(item, pytest.Function) and item.get_closest_marker("trio") and seconds > 0:
        # Half of what is left before the backstop: show where it hangs before that ends it.
        grace = (backstop_seconds(item) - seconds) / 2
        stuck = functools.partial(_tell_terminal, item)
        hypothesis = getattr(item.obj, "hypothesis", None)
        if hypothesis is not None:
            hypothesis.inner_test = capped(hypothesis.inner_test, seconds, stuck=stuck, grace=grace)
        else:
            item.obj = capped(item.obj, seconds, stuck=stuck, grace=grace)
    yield


def _tell_terminal(item: pytest.Item, text: str) -> None:
    """Write past pytest's output capture (what a killed run would never show otherwise)."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    try:
        sys.stderr.write(f"\n{item.nodeid}: {text}\n")
        sys.stderr.flush()
    finally:
        if capture is not None:
            capture.resume_global_capture()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """CA, server and client certificates made by the real `fluidity certs init`."""
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


@pytest.fixture(scope="session")
def cert_dir(pki: Pki) -> Path:
    """The directory of the session's PKI, as `fluidity certs init` leaves it."""
    return pki.dir
