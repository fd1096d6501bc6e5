import json
import logging

from flip_core.logging import JsonFormatter, request_id_var


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "flip.test", "levelname": "INFO", "levelno": 20, "msg": msg})
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_request_id_and_extra_fields() -> None:
    formatter = JsonFormatter("flip-api")
    token = request_id_var.set("req-42")
    try:
        line = formatter.format(_record("request", path="/api/health", status=200))
    finally:
        request_id_var.reset(token)
    entry = json.loads(line)
    assert entry["service"] == "flip-api"
    assert entry["msg"] == "request"
    assert entry["request_id"] == "req-42"
    assert entry["path"] == "/api/health"
    assert entry["status"] == 200
    assert entry["level"] == "info"


def test_no_request_id_outside_a_request() -> None:
    entry = json.loads(JsonFormatter("x").format(_record("boot")))
    assert "request_id" not in entry
