"""The agent's log: lines an admin can read on a terminal, in the journal
and in a log shipper.

- On a terminal (or a file): `time LEVEL logger: message`.
- Under systemd, when stderr is the journal (`$JOURNAL_STREAM` names it):
  no time of our own (the journal has one) and a syslog priority prefix
  (`<3>` for errors...) on every line, so `journalctl -p err` works.
- `--log-format json`: one JSON object per line, with the fields a record
  carries beyond the standard ones (`extra={"vm": ..., "operation": ...}`),
  for log shippers; under the journal it gets the priority prefix too.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
# syslog priorities (sd-daemon(3)): what journald reads from a `<N>` prefix.
SYSLOG_PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}
# Attributes every LogRecord has: anything else came in through `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record carries beyond the standard ones (`extra=`)."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD and not key.startswith("_")}


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return SYSLOG_PRIORITIES[level]
    return SYSLOG_PRIORITIES[logging.DEBUG]


class TextFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        fmt = "%(levelname)s %(name)s: %(message)s" if journal else "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.journal:
            return text
        # The journal makes one entry per line: each needs its priority.
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        text = json.dumps(entry, default=str, ensure_ascii=False)  # one line: json escapes newlines
        return f"<{syslog_priority(record.levelno)}>{text}" if self.journal else text


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """Whether `stream` is the journal systemd connected us to: its device and
    inode are the ones `$JOURNAL_STREAM` names (systemd.exec(5)). A child
    whose stderr was redirected elsewhere inherits the variable, so it is
    not enough alone."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, sep, inode = value.partition(":")
    if not sep or not device.isdigit() or not inode.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def setup(level: str = "INFO", log_format: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Route every `vmhooks` logger (and libraries') to `stream` (stderr)."""
    stream = sys.stderr if stream is None else stream
    journal = stream_is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(journal) if log_format == "json" else TextFormatter(journal))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
