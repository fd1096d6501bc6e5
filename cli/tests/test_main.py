"""The ``flip`` entry point: documented exit codes and configuration errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from click.testing import CliRunner, Result

import flip_cli.main
from flip_cli.errors import EXIT_CODE_TABLE, ExitCode
from flip_cli.main import cli

FlipRunner = Callable[..., Result]


def test_help_lists_every_exit_code() -> None:
    result = CliRunner().invoke(cli, ["--help"])

    assert result.exit_code == ExitCode.OK
    for code in ExitCode:
        assert f"\n    {code.value}  " in result.stdout, code


def test_module_docstring_and_help_epilog_agree() -> None:
    doc = flip_cli.main.__doc__ or ""
    for line in EXIT_CODE_TABLE.splitlines()[2:]:
        assert line.strip() in doc, line


def test_unknown_option_is_a_usage_error() -> None:
    assert CliRunner().invoke(cli, ["admin", "create-user", "--bogus"]).exit_code == ExitCode.USAGE


def test_unreachable_database_is_a_configuration_error(flip: FlipRunner, tmp_path: Path) -> None:
    nowhere = f"postgresql://postgres@/flip?host={tmp_path / 'no-such-socket-dir'}"

    result = flip("admin", "create-user", "--email", "a@example.org", "--name", "A", env={"DATABASE_URL": nowhere})

    assert result.exit_code == ExitCode.CONFIG
    assert "cannot reach the database" in result.stderr


def test_invalid_setting_is_a_configuration_error(flip: FlipRunner) -> None:
    result = flip("audit", "verify", env={"FLIP_HUB_PORT": "not-a-port"})

    assert result.exit_code == ExitCode.CONFIG
    assert "FLIP_HUB_PORT" in result.stderr


def test_bad_data_key_is_a_configuration_error(flip: FlipRunner, tmp_path: Path) -> None:
    result = flip(
        "admin",
        "register-trust",
        "--name",
        "A Trust",
        "--code",
        "AAA",
        "--kit-out",
        str(tmp_path / "a.env"),
        env={"FLIP_DATA_KEY": "not a key"},
    )

    assert result.exit_code == ExitCode.CONFIG
    assert "FLIP_DATA_KEY" in result.stderr
    assert not (tmp_path / "a.env").exists()


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flip_cli.main", "--help"], capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0
    assert "Exit codes:" in done.stdout
