"""Logging setup shared by the agent and the server.

Text for people at a terminal; one JSON object per line for log collectors (CloudWatch
Logs on Fargate). Fields passed with ``extra=`` appear in both: as ``key=value`` after a text
message, as keys of the JSON object.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

__all__ = ["LEVELS", "JsonFormatter", "TextFormatter", "extra_fields", "setup_logging"]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields that were passed to the logging call with ``extra=``."""
    return {
        k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")
    }


class TextFormatter(logging.Formatter):
    """``2024-05-01 12:00:00,123 INFO    fluidity.agent: message key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return text
        head, sep, tail = text.partition("\n")  # keep fields on the message line
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in extras.items())
        return f"{head} {fields}{sep}{tail}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, then the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)  # an extra never hides a core field
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


QUIET_LIBRARIES = (
    "httpx2",
    "httpcore2",
    "httpx",
    "httpcore",
    "trio-websocket",
    "botocore",
    "boto3",
)


def setup_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Send all logs at `level` and above to stderr (or `stream`) in format `fmt`.

    Calling it again replaces the handler it installed before, and nothing else.
    """
    try:
        numeric = LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LEVELS)}") from None
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("fluidity")
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "fluidity":
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # Libraries that log full URLs (query strings included) at INFO speak only when debugging.
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))


def _text_value(value: object) -> str:
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text
