"""``flip admin``: operator bootstrap against a real, initially empty database."""

from __future__ import annotations

import re
import stat
from collections.abc import Callable
from pathlib import Path

import psycopg
from click.testing import Result

from flip_cli.errors import ExitCode
from flip_core.contract import TrustKit

FlipRunner = Callable[..., Result]
Db = psycopg.Connection[tuple[object, ...]]


def _ok(result: Result) -> Result:
    assert result.exit_code == ExitCode.OK, result.output
    return result


def _field(result: Result, name: str) -> str:
    match = re.search(rf"^{name}:\s+(\S+)", result.stdout, re.MULTILINE)
    assert match, result.stdout
    return match.group(1)


def test_create_user_on_empty_database_prints_id_and_password_once(flip: FlipRunner, db: Db) -> None:
    result = _ok(flip("admin", "create-user", "--email", "Ada@Example.org", "--name", "Ada", "--role", "Admin"))

    user_id = _field(result, "user id")
    password = _field(result, "password")
    assert len(password) >= 12
    assert result.stdout.count(password) == 1
    row = db.execute(
        "SELECT u.email, r.name FROM users u JOIN user_roles ur ON ur.user_id = u.id "
        "JOIN roles r ON r.id = ur.role_id WHERE u.id = %s AND ur.trust_id IS NULL",
        (user_id,),
    ).fetchall()
    assert row == [("ada@example.org", "Admin")]


def test_duplicate_email_exits_5(flip: FlipRunner) -> None:
    _ok(flip("admin", "create-user", "--email", "ada@example.org", "--name", "Ada"))

    again = flip("admin", "create-user", "--email", "ADA@example.org", "--name", "Other Ada")

    assert again.exit_code == ExitCode.CONFLICT
    assert "already exists" in again.stderr


def test_password_from_stdin_is_used_and_not_printed(flip: FlipRunner) -> None:
    secret = "correct horse battery staple"
    result = _ok(
        flip("admin", "create-user", "--email", "r@example.org", "--name", "R", "--password-stdin", stdin=secret + "\n")
    )

    assert secret not in result.output
    assert "password:" not in result.stdout


def test_weak_password_from_stdin_is_a_usage_error(flip: FlipRunner) -> None:
    result = flip(
        "admin", "create-user", "--email", "r@example.org", "--name", "R", "--password-stdin", stdin="short\n"
    )

    assert result.exit_code == ExitCode.USAGE
    assert "at least 12" in result.stderr


def test_trust_admin_is_not_a_create_user_role(flip: FlipRunner) -> None:
    result = flip("admin", "create-user", "--email", "t@example.org", "--name", "T", "--role", "Trust Admin")

    assert result.exit_code == ExitCode.USAGE


def test_register_trust_writes_a_private_kit_and_never_prints_keys(
    flip: FlipRunner, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    kit_path = tmp_path / "kits" / "else.env"

    result = _ok(
        flip(
            "admin", "register-trust", "--name", "St Elsewhere NHS Trust", "--code", "else", "--kit-out", str(kit_path)
        )
    )

    assert stat.S_IMODE(kit_path.stat().st_mode) == 0o600
    kit = TrustKit.from_env(kit_path.read_text())
    assert kit.trust_code == "ELSE"
    assert kit.trust_name == "St Elsewhere NHS Trust"
    assert kit.hub_url == cli_env["FLIP_HUB_PUBLIC_URL"]
    assert str(kit.trust_id) == _field(result, "trust id")
    for secret in (kit.api_key, kit.payload_key, kit.internal_key):
        assert secret not in result.output
    assert not [p for p in kit_path.parent.iterdir() if p.name != "else.env"], "temporary files left behind"


def test_register_trust_hub_url_option_wins(flip: FlipRunner, tmp_path: Path) -> None:
    kit_path = tmp_path / "rivr.env"
    _ok(
        flip(
            "admin",
            "register-trust",
            "--name",
            "Riverside Hospital",
            "--code",
            "RIVR",
            "--hub-url",
            "https://other.example.org",
            "--kit-out",
            str(kit_path),
        )
    )

    assert TrustKit.from_env(kit_path.read_text()).hub_url == "https://other.example.org"


def test_register_trust_refuses_to_overwrite_a_kit_unless_forced(flip: FlipRunner, tmp_path: Path) -> None:
    kit_path = tmp_path / "kit.env"
    _ok(flip("admin", "register-trust", "--name", "A Trust", "--code", "AAA", "--kit-out", str(kit_path)))
    first = kit_path.read_text()

    refused = flip("admin", "register-trust", "--name", "B Trust", "--code", "BBB", "--kit-out", str(kit_path))
    assert refused.exit_code == ExitCode.CONFLICT
    assert kit_path.read_text() == first

    forced = flip(
        "admin", "register-trust", "--name", "B Trust", "--code", "BBB", "--kit-out", str(kit_path), "--force"
    )
    _ok(forced)
    assert TrustKit.from_env(kit_path.read_text()).trust_code == "BBB"
    assert stat.S_IMODE(kit_path.stat().st_mode) == 0o600


def test_duplicate_trust_exits_5_and_writes_no_kit(flip: FlipRunner, tmp_path: Path, db: Db) -> None:
    _ok(flip("admin", "register-trust", "--name", "A Trust", "--code", "AAA", "--kit-out", str(tmp_path / "a.env")))

    clash = flip("admin", "register-trust", "--name", "Another", "--code", "aaa", "--kit-out", str(tmp_path / "b.env"))

    assert clash.exit_code == ExitCode.CONFLICT
    assert not (tmp_path / "b.env").exists()
    assert db.execute("SELECT count(*) FROM trusts").fetchone() == (1,)


def test_kit_that_cannot_be_written_rolls_the_registration_back(flip: FlipRunner, tmp_path: Path, db: Db) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    result = flip("admin", "register-trust", "--name", "A Trust", "--code", "AAA", "--kit-out", str(blocker / "a.env"))

    assert result.exit_code == ExitCode.FAILURE
    assert db.execute("SELECT count(*) FROM trusts").fetchone() == (0,)


def test_grant_role_validates_trust_option(flip: FlipRunner) -> None:
    _ok(flip("admin", "create-user", "--email", "u@example.org", "--name", "U"))

    no_trust = flip("admin", "grant-role", "--email", "u@example.org", "--role", "Trust Admin")
    global_with_trust = flip("admin", "grant-role", "--email", "u@example.org", "--role", "Viewer", "--trust", "AAA")
    bad_role = flip("admin", "grant-role", "--email", "u@example.org", "--role", "Overlord")

    assert no_trust.exit_code == ExitCode.USAGE
    assert global_with_trust.exit_code == ExitCode.USAGE
    assert bad_role.exit_code == ExitCode.USAGE


def test_grant_role_unknown_user_or_trust_exits_5(flip: FlipRunner, tmp_path: Path) -> None:
    _ok(flip("admin", "create-user", "--email", "u@example.org", "--name", "U"))
    _ok(flip("admin", "register-trust", "--name", "A Trust", "--code", "AAA", "--kit-out", str(tmp_path / "a.env")))

    unknown_user = flip("admin", "grant-role", "--email", "nobody@example.org", "--role", "Viewer")
    unknown_trust = flip("admin", "grant-role", "--email", "u@example.org", "--role", "Trust Admin", "--trust", "ZZZ")

    assert unknown_user.exit_code == ExitCode.CONFLICT
    assert unknown_trust.exit_code == ExitCode.CONFLICT


def test_grant_global_role_keeps_existing_ones(flip: FlipRunner, db: Db) -> None:
    _ok(flip("admin", "create-user", "--email", "u@example.org", "--name", "U", "--role", "Researcher"))

    first = _ok(flip("admin", "grant-role", "--email", "u@example.org", "--role", "admin"))
    again = _ok(flip("admin", "grant-role", "--email", "u@example.org", "--role", "Admin"))

    assert "granted" in first.stdout
    assert "already held" in again.stdout
    roles = db.execute(
        "SELECT r.name FROM user_roles ur JOIN roles r ON r.id = ur.role_id "
        "JOIN users u ON u.id = ur.user_id WHERE u.email = 'u@example.org' ORDER BY r.name"
    ).fetchall()
    assert roles == [("Admin",), ("Researcher",)]


def test_grant_trust_admin_is_scoped_to_that_trust(flip: FlipRunner, tmp_path: Path, db: Db) -> None:
    _ok(flip("admin", "create-user", "--email", "t@example.org", "--name", "T"))
    _ok(flip("admin", "register-trust", "--name", "A Trust", "--code", "AAA", "--kit-out", str(tmp_path / "a.env")))

    _ok(flip("admin", "grant-role", "--email", "t@example.org", "--role", "trust admin", "--trust", "aaa"))

    grants = db.execute(
        "SELECT r.name, t.code FROM user_roles ur JOIN roles r ON r.id = ur.role_id "
        "LEFT JOIN trusts t ON t.id = ur.trust_id"
    ).fetchall()
    assert grants == [("Trust Admin", "AAA")]
