"""Fixtures that build linked agent/server `Connection` pairs (see helpers.Link)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .helpers import Link


@pytest.fixture(scope="session")
def new_link() -> type[Link]:
    """The Link class itself, for tests that drive the handshake by hand."""
    return Link


@pytest.fixture(scope="session")
def open_link() -> Callable[..., Link]:
    """Factory for handshaken links; session-scoped so hypothesis tests may use it."""
    return Link.open


@pytest.fixture
def link() -> Link:
    """A handshaken agent/server pair with default settings."""
    return Link.open()
