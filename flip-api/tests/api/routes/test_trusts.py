"""Trust registration, kits, key rotation, the whoami echo and Trust Admin appointment."""

from __future__ import annotations

import uuid

import httpx
from hub_testing import MakeUser
from sqlalchemy import select

from flip_api.core.permissions import Perm, RoleName
from flip_api.core.state import HubState
from flip_api.db.models import Trust, TrustPayloadKey
from flip_api.services.trusts import payload_keyring
from flip_core.contract import PROTOCOL_VERSION, TrustKit
from flip_core.crypto import decode_key
from flip_core.keys import hash_key


def _machine(key: str | None) -> dict[str, str]:
    headers = {"X-Flip-Protocol": PROTOCOL_VERSION}
    if key is not None:
        headers["X-Trust-Key"] = key
    return headers


async def _register(client: httpx.AsyncClient, headers: dict[str, str], code: str = "ELSE") -> dict[str, object]:
    r = await client.post(
        "/api/trusts", headers=headers, json={"name": f"Trust {code}", "code": code, "region": "London"}
    )
    assert r.status_code == 201, r.text
    body: dict[str, object] = r.json()
    return body


async def test_register_shows_keys_once_and_stores_only_hash(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    admin = await make_user(RoleName.ADMIN)
    body = await _register(client, admin.headers)
    kit = TrustKit.from_env(str(body["kit_env"]))
    assert kit.api_key == body["api_key"]
    assert kit.trust_code == "ELSE"
    assert kit.hub_url == hub.settings.public_url
    async with hub.sessions() as s:
        trust = await s.get(Trust, kit.trust_id)
        assert trust is not None
        assert trust.api_key_hash == hash_key(kit.api_key)
        assert kit.api_key not in trust.api_key_hash
        stored = (await s.scalars(select(TrustPayloadKey))).all()
        assert len(stored) == 1
        assert decode_key(kit.payload_key) not in stored[0].wrapped_key
        ring = await payload_keyring(s, hub.data_key, trust)
        sealed = ring.seal("task:test", b"hello")
        assert sealed.kid == kit.payload_key_id
    # Reading the trust again never shows a key.
    r = await client.get(f"/api/trusts/{kit.trust_id}", headers=admin.headers)
    assert "api_key" not in r.json()
    assert kit.api_key not in r.text
    assert r.json()["status"] == "never_seen"
    assert r.json()["decides_as"] == "HUB"


async def test_whoami_echoes_identity_and_rejects_bad_keys(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    kit = TrustKit.from_env(str((await _register(client, admin.headers))["kit_env"]))
    r = await client.get("/api/trust/whoami", headers=_machine(kit.api_key))
    assert r.status_code == 200
    assert r.json() == {"trust_id": str(kit.trust_id), "code": "ELSE", "name": "Trust ELSE", "protocol_version": "1.0"}
    r = await client.get("/api/trust/whoami", headers=_machine(kit.api_key + "x"))
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_trust_key"
    r = await client.get("/api/trust/whoami", headers=_machine(None))
    assert r.status_code == 401
    assert r.json()["code"] == "missing_trust_key"
    # A user token is not a trust key.
    r = await client.get("/api/trust/whoami", headers={**admin.headers, "X-Flip-Protocol": "1.0"})
    assert r.status_code == 401


async def test_machine_routes_refuse_unknown_protocol_versions(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    kit = TrustKit.from_env(str((await _register(client, admin.headers))["kit_env"]))
    cases = [(None, "protocol_required"), ("2.0", "protocol_unsupported"), ("one", "protocol_malformed")]
    for version, code in cases:
        headers = {"X-Trust-Key": kit.api_key}
        if version is not None:
            headers["X-Flip-Protocol"] = version
        r = await client.get("/api/trust/whoami", headers=headers)
        assert r.status_code == 400, version
        assert r.json()["code"] == code
    r = await client.get("/api/trust/whoami", headers={"X-Trust-Key": kit.api_key, "X-Flip-Protocol": "1.7"})
    assert r.status_code == 200


async def test_duplicate_trust_refused_and_nothing_written(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    admin = await make_user(RoleName.ADMIN)
    await _register(client, admin.headers, "ELSE")
    r = await client.post("/api/trusts", headers=admin.headers, json={"name": "trust else", "code": "OTHER"})
    assert r.status_code == 409
    assert r.json()["code"] == "duplicate_trust"
    r = await client.post("/api/trusts", headers=admin.headers, json={"name": "Another", "code": "else"})
    assert r.status_code == 409
    r = await client.post("/api/trusts", headers=admin.headers, json={"name": "Bad", "code": "../etc"})
    assert r.status_code == 422
    async with hub.sessions() as s:
        assert len((await s.scalars(select(Trust))).all()) == 1


async def test_rotation_invalidates_old_key_and_keeps_old_payload_keys(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    admin = await make_user(RoleName.ADMIN)
    old = TrustKit.from_env(str((await _register(client, admin.headers))["kit_env"]))
    async with hub.sessions() as s:
        trust = await s.get(Trust, old.trust_id)
        assert trust is not None
        sealed_before = (await payload_keyring(s, hub.data_key, trust)).seal("task:x", b"before")
    r = await client.post(f"/api/trusts/{old.trust_id}/rotate-keys", headers=admin.headers)
    assert r.status_code == 200
    new = TrustKit.from_env(r.json()["kit_env"])
    assert new.api_key != old.api_key
    assert new.payload_key_id != old.payload_key_id
    assert (await client.get("/api/trust/whoami", headers=_machine(old.api_key))).status_code == 401
    assert (await client.get("/api/trust/whoami", headers=_machine(new.api_key))).status_code == 200
    async with hub.sessions() as s:
        trust = await s.get(Trust, old.trust_id)
        assert trust is not None
        ring = await payload_keyring(s, hub.data_key, trust)
        assert ring.current == new.payload_key_id
        assert ring.open(sealed_before, "task:x") == b"before"


async def test_trust_admins_appoint_and_never_remove_the_last(
    client: httpx.AsyncClient, make_user: MakeUser, hub: HubState
) -> None:
    admin = await make_user(RoleName.ADMIN)
    trust_id = TrustKit.from_env(str((await _register(client, admin.headers))["kit_env"])).trust_id
    first = await make_user()
    second = await make_user()
    r = await client.post(f"/api/trusts/{trust_id}/admins", headers=admin.headers, json={"user_id": str(first.id)})
    assert r.status_code == 200
    assert [a["user_id"] for a in r.json()] == [str(first.id)]
    # Idempotent.
    r = await client.post(f"/api/trusts/{trust_id}/admins", headers=admin.headers, json={"user_id": str(first.id)})
    assert len(r.json()) == 1
    assert (await client.get(f"/api/trusts/{trust_id}", headers=admin.headers)).json()["decides_as"] == "SITE"
    # The trust admin now holds trust-scoped permissions at this trust only, and no global ones.
    me = (await client.get("/api/users/me", headers=first.headers)).json()
    assert me["roles"] == [{"role": "Trust Admin", "trust_id": str(trust_id)}]
    assert set(me["permissions"]) == {Perm.APPROVE_FOR_TRUST.value, Perm.MANAGE_TRUST_GOVERNANCE.value}
    # A trust admin governs their own trust: they may appoint a colleague.
    r = await client.post(f"/api/trusts/{trust_id}/admins", headers=first.headers, json={"user_id": str(second.id)})
    assert r.status_code == 200
    assert len(r.json()) == 2
    r = await client.delete(f"/api/trusts/{trust_id}/admins/{second.id}", headers=first.headers)
    assert r.status_code == 204
    r = await client.delete(f"/api/trusts/{trust_id}/admins/{first.id}", headers=admin.headers)
    assert r.status_code == 409
    assert r.json()["code"] == "last_trust_admin"
    r = await client.delete(f"/api/trusts/{trust_id}/admins/{uuid.uuid4()}", headers=admin.headers)
    assert r.status_code == 404


async def test_trust_admin_of_one_trust_cannot_govern_another(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    a = TrustKit.from_env(str((await _register(client, admin.headers, "AAA"))["kit_env"])).trust_id
    b = TrustKit.from_env(str((await _register(client, admin.headers, "BBB"))["kit_env"])).trust_id
    ta = await make_user()
    await client.post(f"/api/trusts/{a}/admins", headers=admin.headers, json={"user_id": str(ta.id)})
    outsider = await make_user()
    r = await client.post(f"/api/trusts/{b}/admins", headers=ta.headers, json={"user_id": str(outsider.id)})
    assert r.status_code == 403
    assert r.json()["code"] == "not_trust_governor"
    # ...and a trust-scoped grant never satisfies a global check.
    r = await client.post("/api/trusts", headers=ta.headers, json={"name": "Sneaky", "code": "SNK"})
    assert r.status_code == 403


async def test_any_signed_in_user_reads_the_roster(client: httpx.AsyncClient, make_user: MakeUser) -> None:
    admin = await make_user(RoleName.ADMIN)
    await _register(client, admin.headers, "AAA")
    viewer = await make_user(RoleName.VIEWER)
    await _register(client, admin.headers, "BBB")
    r = await client.get("/api/trusts", headers=viewer.headers)
    assert r.status_code == 200
    assert [t["code"] for t in r.json()["items"]] == ["AAA", "BBB"]
    assert r.json()["total"] == 2
    r = await client.get("/api/trusts", headers=viewer.headers, params={"page_size": 1, "page": 2})
    assert [t["code"] for t in r.json()["items"]] == ["BBB"]
    r = await client.get("/api/trusts", headers=viewer.headers, params={"q": "bb"})
    assert [t["code"] for t in r.json()["items"]] == ["BBB"]
    assert (await client.get("/api/trusts")).status_code == 401
