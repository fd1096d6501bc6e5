"""Run events: the JSON-lines report file, the POST to the hub with the internal key, sanitised reasons."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from flip_fl.flower.events import (
    INTERNAL_KEY_HEADER,
    REPORT_KEY_ENV,
    REPORT_URL_ENV,
    Reporter,
    RoundCompleted,
    RunFailed,
    parse_event,
    read_report,
    sanitise,
)


class _Hub(BaseHTTPRequestHandler):
    received: list[tuple[str, bytes]] = []
    status = 204

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.headers[INTERNAL_KEY_HEADER], body))
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def hub() -> Iterator[str]:
    _Hub.received = []
    server = HTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/internal/fl/events"
    server.shutdown()
    server.server_close()


def _round() -> RoundCompleted:
    return RoundCompleted(job_id="j1", run_id=7, round=1, phase="train",
                          metrics={"AAA": {"loss": 0.5, "num_examples": 10.0}}, aggregated={"loss": 0.5})  # fmt: skip


def test_events_are_appended_to_the_report_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPORT_URL_ENV, raising=False)
    report = tmp_path / "out" / "report.jsonl"
    reporter = Reporter.from_env(str(report))
    reporter.emit(_round())
    reporter.emit(RunFailed(job_id="j1", run_id=7, reason="round 2: too few trusts"))
    events = read_report(report)
    assert [e.event for e in events] == ["round_completed", "run_failed"]
    assert events[0] == _round().model_copy(update={"at": events[0].at})


def test_events_are_posted_to_the_hub_with_the_internal_key(hub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REPORT_URL_ENV, hub)
    monkeypatch.setenv(REPORT_KEY_ENV, "k-secret")
    Reporter.from_env("").emit(_round())
    [(key, body)] = _Hub.received
    assert key == "k-secret"
    assert parse_event(body).event == "round_completed"


def test_a_refusing_hub_does_not_stop_the_run(hub: str) -> None:
    _Hub.status = 403
    try:
        Reporter(url=hub, key="wrong", attempts=3).emit(_round())
    finally:
        _Hub.status = 204
    assert len(_Hub.received) == 1  # a 4xx is not retried


def test_an_unreachable_hub_does_not_stop_the_run() -> None:
    Reporter(url="http://127.0.0.1:9/none", attempts=1, timeout_s=0.5).emit(_round())


def test_reasons_are_one_short_line() -> None:
    assert sanitise("boom\nTraceback (most recent call last):\n  secret") == "boom"
    assert sanitise("a\x1b[31mred") == "a [31mred"
    assert len(sanitise("x" * 1000)) == 300
    assert sanitise("") == "unknown error"
