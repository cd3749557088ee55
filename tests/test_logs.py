"""vmhooks.logs: what the agent's log lines look like on a terminal, in
the journal and for a log shipper."""
from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path

import pytest

from vmhooks import logs


def record(level: int = logging.INFO, msg: str = "VM %s: %s ok", args: tuple = ("web", "pause"), **extra) -> logging.LogRecord:
    made = logging.LogRecord("vmhooks.agent", level, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def test_text_has_a_timestamp_off_the_journal():
    line = logs.TextFormatter().format(record())
    assert line.endswith(" INFO vmhooks.agent: VM web: pause ok") and line[:4].isdigit()


def test_journal_text_has_the_priority_on_every_line_and_no_timestamp():
    formatter = logs.TextFormatter(journal=True)
    assert formatter.format(record()) == "<6>INFO vmhooks.agent: VM web: pause ok"
    assert formatter.format(record(logging.ERROR, "a\nb", ())) == "<3>ERROR vmhooks.agent: a\n<3>b"
    assert formatter.format(record(logging.WARNING, "w", ())).startswith("<4>")
    assert formatter.format(record(logging.DEBUG, "d", ())).startswith("<7>")
    assert formatter.format(record(logging.CRITICAL, "c", ())).startswith("<2>")


def test_json_carries_the_extra_fields():
    line = logs.JsonFormatter().format(record(vm="web", operation="pause", result="ok", duration_s=0.012, hooks_failed=0))
    entry = json.loads(line)
    assert entry["message"] == "VM web: pause ok" and entry["level"] == "INFO" and entry["logger"] == "vmhooks.agent"
    assert {k: entry[k] for k in ("vm", "operation", "result", "duration_s", "hooks_failed")} == {
        "vm": "web", "operation": "pause", "result": "ok", "duration_s": 0.012, "hooks_failed": 0}
    assert entry["time"].endswith("+00:00") and "T" in entry["time"]
    plain = json.loads(logs.JsonFormatter().format(record()))
    assert set(plain) == {"time", "level", "logger", "message"}


def test_json_keeps_tracebacks_and_odd_values_on_one_line():
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = record(logging.ERROR, "failed", (), path=Path("/x"))
        failed.exc_info = sys.exc_info()
    line = logs.JsonFormatter(journal=True).format(failed)
    assert line.startswith("<3>{") and "\n" not in line
    entry = json.loads(line[3:])
    assert "ValueError: boom" in entry["exception"] and entry["path"] == "/x"


def test_the_journal_is_recognised_by_device_and_inode(tmp_path: Path):
    with open(tmp_path / "log", "w") as stream:
        st = os.fstat(stream.fileno())
        assert logs.stream_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not logs.stream_is_journal(stream, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not logs.stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not logs.stream_is_journal(stream, {})
    assert not logs.stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})


@pytest.mark.parametrize("log_format", logs.FORMATS)
def test_setup_replaces_the_handlers(log_format: str):
    stream = io.StringIO()
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    try:
        logs.setup("WARNING", log_format, stream)
        logs.setup("INFO", log_format, stream)
        logging.getLogger("vmhooks.test").info("hello", extra={"vm": "web"})
        logging.getLogger("vmhooks.test").debug("hidden")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "hello" in lines[0]
    if log_format == "json":
        assert json.loads(lines[0])["vm"] == "web"
