"""config.logs: the JSON line format, structured fields, and gateways and workers started with ASR_LOG_FORMAT=json."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys

import pytest

from bench.client import StreamClient
from config import logs
from tests import audio


def _record(message: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    record = logging.LogRecord("app.handler", logging.INFO, __file__, 1, message, args, exc_info)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_keep_newlines_and_control_characters_inside_one_line():
    line = logs.JsonFormatter().format(_record("session %s\nforged line\r\x1b[31m %s \u2028 名", "abc", 'x"y'))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    entry = json.loads(line)
    assert entry["message"] == 'session abc\nforged line\r\x1b[31m x"y \u2028 名'
    assert entry["level"] == "INFO" and entry["logger"] == "app.handler" and entry["time"].endswith("+00:00")


def test_structured_fields_become_keys_and_tracebacks_stay_in_the_line():
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = _record(
        "session %s: unexpected error", "s1", exc_info=exc_info, **logs.fields(session="s1", worker="w1@h", stream=None)
    )
    line = logs.JsonFormatter().format(record)
    entry = json.loads(line)
    assert (entry["session"], entry["worker"]) == ("s1", "w1@h") and "stream" not in entry
    assert "RuntimeError: boom\nsecond line" in entry["exc"] and "\n" not in line


def test_stream_fields_name_the_session_and_the_chunk():
    assert logs.stream_fields("abc/2", 7) == {"session": "abc", "stream": "abc/2", "chunk": 7}
    assert logs.stream_fields("noslash") == {"stream": "noslash"}


def test_text_format_is_unchanged_and_process_fields_fill_in_the_worker(monkeypatch):
    monkeypatch.setitem(logs.PROCESS_FIELDS.values, "worker", "w9@host")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("tests.config.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logs.use_format("json", [logger])
        logger.info("chunk %d of %s", 3, "s/0", extra=logs.stream_fields("s/0", 3))
        logger.info("from another worker", extra=logs.fields(worker="other"))
        handler.setFormatter(logs.formatter("text", "%(message)s"))
        logger.info("plain %s", "text", extra=logs.fields(session="s"))
    finally:
        logger.removeHandler(handler)
    first, second, third = stream.getvalue().splitlines()
    assert json.loads(first)["worker"] == "w9@host" and json.loads(first)["chunk"] == 3
    assert json.loads(second)["worker"] == "other", "a record's own field wins"
    assert third == "plain text"


def test_an_unknown_format_names_the_setting():
    with pytest.raises(ValueError, match="ASR_LOG_FORMAT"):
        logs.formatter("xml")


def test_gateway_and_worker_started_with_json_log_json_lines(make_stack):
    s = make_stack("jsonlog", log_format="json")
    worker = s.start_worker("w1")
    s.start_gateway()
    gateway_proc = s.procs[-1]
    record = asyncio.run(
        StreamClient(s.url, config={"wav_name": "bad\nname"}, pace=0, timeout=30).run(audio.noise(1.0, seed=90))
    )
    assert record.final is not None
    s.stop()  # flushes both logs

    gateway = [line for line in gateway_proc.log.read_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in gateway]  # every line, gunicorn's own included
    session_lines = [e for e in entries if e["message"].startswith("session ")]
    assert len(session_lines) >= 2, gateway
    assert all(e["session"] and e["worker"] == s.worker_id("w1") for e in session_lines)
    assert any("bad\\nname" in e["message"] for e in session_lines), "client-supplied names stay escaped"

    lines = worker.log.read_text().splitlines()
    worker_entries = [json.loads(line) for line in lines if line.startswith("{")]
    ready = [e for e in worker_entries if e["message"].startswith("model ready")]
    assert ready and ready[0]["worker"] == s.worker_id("w1")
