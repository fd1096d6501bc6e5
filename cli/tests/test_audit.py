"""``flip audit verify`` on a clean chain and after tampering behind the table's triggers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psycopg
from click.testing import Result

from flip_cli.errors import ExitCode

FlipRunner = Callable[..., Result]
Db = psycopg.Connection[tuple[object, ...]]


def _seed(flip: FlipRunner, tmp_path: Path) -> None:
    for args in (
        ("admin", "create-user", "--email", "a@example.org", "--name", "A", "--role", "Admin"),
        ("admin", "register-trust", "--name", "A Trust", "--code", "AAA", "--kit-out", str(tmp_path / "a.env")),
        ("admin", "grant-role", "--email", "a@example.org", "--role", "Trust Admin", "--trust", "AAA"),
    ):
        result = flip(*args)
        assert result.exit_code == ExitCode.OK, result.output


def test_clean_chain_verifies(flip: FlipRunner, tmp_path: Path) -> None:
    _seed(flip, tmp_path)

    text = flip("audit", "verify")
    as_json = flip("audit", "verify", "--json")

    assert text.exit_code == ExitCode.OK, text.output
    assert "chain OK" in text.stdout
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == ExitCode.OK
    assert report["ok"] is True
    assert report["entries"] >= 4
    assert len(report["head_hash"]) == 64
    assert report["problems"] == []


def test_tampered_entry_exits_4(flip: FlipRunner, tmp_path: Path, db: Db) -> None:
    _seed(flip, tmp_path)
    # Only a superuser who disables the append-only triggers can do this; verify must still notice.
    db.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    db.execute("""UPDATE audit_log SET details = '{"email": "someone-else@example.org"}' WHERE seq = 1""")
    db.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")

    text = flip("audit", "verify")
    as_json = flip("audit", "verify", "--json")

    assert text.exit_code == ExitCode.AUDIT_BROKEN, text.output
    assert "chain BROKEN" in text.stdout
    assert "seq 1" in text.stdout
    report = json.loads(as_json.stdout)
    assert as_json.exit_code == ExitCode.AUDIT_BROKEN
    assert report["ok"] is False
    assert {"seq": 1, "problem": "entry content does not match its hash"} in report["problems"]


def test_deleted_entry_exits_4(flip: FlipRunner, tmp_path: Path, db: Db) -> None:
    _seed(flip, tmp_path)
    db.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    db.execute("DELETE FROM audit_log WHERE seq = 2")
    db.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")

    result = flip("audit", "verify", "--json")

    assert result.exit_code == ExitCode.AUDIT_BROKEN
    assert any(p["seq"] == 3 for p in json.loads(result.stdout)["problems"])


def test_uninitialised_database_is_a_configuration_error(flip: FlipRunner) -> None:
    result = flip("audit", "verify")

    assert result.exit_code == ExitCode.CONFIG
    assert "not initialised" in result.stderr
