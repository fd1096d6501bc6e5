"""Agent settings from the environment, the state folder, and reading kits."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from flip_core.contract import TrustKit
from flip_core.crypto import encode_key, new_key
from flip_core.tasks import TaskType
from flip_trust_api.agent import Agent
from flip_trust_api.config import AgentSettings, load_kit
from flip_trust_api.errors import AgentConfigError, KitError

KIT = TrustKit(
    hub_url="http://127.0.0.1:8000",
    trust_id=uuid.uuid4(),
    trust_code="KCH",
    trust_name="King's",
    api_key="flip_tk_" + "k" * 40,
    payload_key_id="trust-kch-1",
    payload_key=encode_key(new_key()),
    internal_key="flip_ik_" + "i" * 40,
)


def test_defaults_suit_a_single_host(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FLIP_AGENT_KIT_FILE", "FLIP_AGENT_STATE_DIR", "FLIP_AGENT_CONCURRENCY", "FLIP_AGENT_HEALTH_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = AgentSettings()
    assert settings.heartbeat_interval_s == 30
    assert settings.lease_wait_s == 25
    assert settings.lease_s == 120
    assert settings.health_interval_s == 30
    assert (settings.health_host, settings.health_port) == ("127.0.0.1", 0)
    assert settings.concurrency == {}
    assert settings.data_access_url is None


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIP_AGENT_CONCURRENCY", '{"cohort_query": 2, "ping": 1}')
    monkeypatch.setenv("FLIP_AGENT_IMAGING_URL", "  ")
    monkeypatch.setenv("FLIP_AGENT_OMOP_DSN", "postgresql://reader:pw@omop/omop")
    settings = AgentSettings()
    assert settings.concurrency == {TaskType.COHORT_QUERY: 2, TaskType.PING: 1}
    assert settings.imaging_url is None  # blank means unset
    assert settings.omop_dsn is not None
    assert "pw" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLIP_AGENT_CONCURRENCY", '{"no_such_task": 2}'),
        ("FLIP_AGENT_CONCURRENCY", '{"ping": 0}'),
        ("FLIP_AGENT_LEASE_WAIT_S", "26"),
        ("FLIP_AGENT_LEASE_S", "5"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        AgentSettings()


def test_state_dir_defaults_under_flip_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FLIP_AGENT_STATE_DIR", raising=False)
    monkeypatch.setenv("FLIP_STATE_DIR", str(tmp_path / "state"))
    assert AgentSettings().resolve_state_dir(KIT) == tmp_path / "state" / "trust-kch"
    explicit = AgentSettings(FLIP_AGENT_STATE_DIR=tmp_path / "mine")
    assert explicit.resolve_state_dir(KIT) == tmp_path / "mine"


def test_a_kit_round_trips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "kit.env"
    path.write_text(KIT.to_env())
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert load_kit(path) == KIT
    assert caplog.text == ""
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        load_kit(path)
    assert "readable by other users" in caplog.text


def test_kit_problems_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="pass --kit"):
        load_kit(None)
    with pytest.raises(KitError, match="cannot read the trust kit"):
        load_kit(tmp_path / "missing.env")
    broken = tmp_path / "broken.env"
    broken.write_text(KIT.to_env().replace("FLIP_TRUST_API_KEY", "# FLIP_TRUST_API_KEY"))
    with pytest.raises(KitError, match="api_key: Field required") as caught:
        load_kit(broken)
    assert KIT.payload_key not in str(caught.value)


def test_an_unusable_payload_key_is_a_kit_error(tmp_path: Path) -> None:
    bad = KIT.model_copy(update={"payload_key": "bm90IDMyIGJ5dGVz"})
    with pytest.raises(KitError, match="payload key"):
        Agent(AgentSettings(FLIP_AGENT_STATE_DIR=tmp_path), bad)


async def test_an_unusable_state_folder_is_a_config_error(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "state"
    not_a_folder.write_text("")
    agent = Agent(AgentSettings(FLIP_AGENT_STATE_DIR=not_a_folder), KIT)
    with pytest.raises(AgentConfigError, match="cannot open the outbox"):
        await agent.run()
    assert not agent.health_ready.is_set()


def test_poll_waits_are_spread_so_agents_do_not_poll_in_lockstep(tmp_path: Path) -> None:
    settings = AgentSettings(FLIP_AGENT_STATE_DIR=tmp_path, FLIP_AGENT_LEASE_WAIT_S=25)
    agent = Agent(settings, KIT)
    waits = {agent._poll_wait() for _ in range(500)}
    assert min(waits) >= 20.0
    assert max(waits) <= 25.0
    assert len(waits) > 20  # spread, not a handful of values
