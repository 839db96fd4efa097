"""`setup_logging`: text for people, one JSON object per line for collectors."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from fluidity.logs import JsonFormatter, TextFormatter, setup_logging


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def record(message: str = "link up %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("fluidity.test").makeRecord(
        "fluidity.test", logging.WARNING, __file__, 1, message, args or ("now",), None
    )
    rec.__dict__.update(extra)
    return rec


def test_json_line_has_the_core_fields_and_extras() -> None:
    line = JsonFormatter().format(record(peer="203.0.113.1:443", streams=3))
    data = json.loads(line)
    assert data["level"] == "warning"
    assert data["logger"] == "fluidity.test"
    assert data["message"] == "link up now"
    assert data["peer"] == "203.0.113.1:443"
    assert data["streams"] == 3
    assert data["time"].endswith("+00:00")
    assert "\n" not in line


def test_json_includes_exceptions_and_survives_odd_extras() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        rec = record(obj=object())
        rec.exc_info = sys.exc_info()
    data = json.loads(JsonFormatter().format(rec))
    assert "RuntimeError: boom" in data["exception"]
    assert data["obj"].startswith("<object object")


def test_text_line_is_readable_with_extras() -> None:
    line = TextFormatter().format(record(peer="a b", n=1))
    assert "WARNING" in line
    assert "fluidity.test: link up now" in line
    assert line.endswith('peer="a b" n=1')


def test_setup_logging_json(root_logger: logging.Logger) -> None:
    stream = io.StringIO()
    setup_logging("debug", "json", stream=stream)
    logging.getLogger("fluidity.x").debug("hello", extra={"k": "v"})
    data = json.loads(stream.getvalue().splitlines()[-1])
    assert (data["message"], data["k"], data["level"]) == ("hello", "v", "debug")


def test_setup_logging_level_and_replacement(root_logger: logging.Logger) -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", stream=first)
    setup_logging("warning", "text", stream=second)
    log = logging.getLogger("fluidity.y")
    log.info("quiet")
    log.warning("loud")
    assert first.getvalue() == ""
    assert "quiet" not in second.getvalue()
    assert "loud" in second.getvalue()
    assert sum(h.get_name() == "fluidity" for h in root_logger.handlers) == 1


def test_setup_logging_rejects_unknown_values() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging("loud", "text")
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("info", "xml")


def test_json_core_fields_come_first_and_win() -> None:
    data = json.loads(JsonFormatter().format(record(level="fake", zone="b")))
    assert list(data)[:4] == ["time", "level", "logger", "message"]
    assert data["level"] == "warning"
    assert data["zone"] == "b"


def test_text_renders_structures_as_json() -> None:
    line = TextFormatter().format(record(config={"port": 1, "hosts": ["a"]}))
    assert line.endswith('config={"port":1,"hosts":["a"]}')
