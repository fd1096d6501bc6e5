"""External OIDC provider: tokens verified against a real JWKS endpoint, mapped to local users by email."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hub_testing import MakeUser, make_user_factory
from jwt.algorithms import RSAAlgorithm

from flip_api.core.config import HubSettings
from flip_api.core.permissions import RoleName
from flip_api.core.state import HubState
from flip_api.main import create_app

ISSUER = "https://idp.example.org/realms/flip"
AUDIENCE = "flip-hub"


class Provider:
    """A signing key and a JWKS document served on loopback, like an identity provider's."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "k1", "use": "sig", "alg": "RS256"})
        self.jwks = json.dumps({"keys": [jwk]}).encode()
        self.url = ""

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "idp-user-1", "iat": now, "exp": now + 300}
        claims.update(overrides)
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def provider() -> Iterator[Provider]:
    idp = Provider()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(idp.jwks)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    idp.url = f"http://127.0.0.1:{server.server_address[1]}/protocol/openid-connect/certs"
    try:
        yield idp
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
async def oidc_client(
    provider: Provider, db_url: str, tmp_path: Path, settings: HubSettings
) -> AsyncIterator[tuple[httpx.AsyncClient, HubState]]:
    oidc = settings.model_copy(update={"oidc_jwks_url": provider.url, "oidc_issuer": ISSUER, "oidc_audience": AUDIENCE})
    app = create_app(oidc, db_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as c:
            yield c, app.state.hub


async def test_provider_token_maps_to_local_user_and_roles(
    oidc_client: tuple[httpx.AsyncClient, HubState], provider: Provider
) -> None:
    client, hub = oidc_client
    make_user: MakeUser = _maker(hub)
    local = await make_user(RoleName.RESEARCHER, email="dr.who@example.org")
    r = await client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {provider.token(email='Dr.Who@example.org')}"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["id"] == str(local.id)
    assert r.json()["permissions"] == ["CAN_CREATE_PROJECTS"]
    # The hub's own tokens keep working beside the provider's.
    assert (await client.get("/api/users/me", headers=local.headers)).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "code"),
    [
        ({"email": "stranger@example.org"}, "unknown_identity"),
        ({"email": "dr.who@example.org", "aud": "another-app"}, "invalid_token"),
        ({"email": "dr.who@example.org", "exp": int(time.time()) - 10}, "invalid_token"),
        ({}, "invalid_token"),
    ],
)
async def test_provider_tokens_that_must_be_refused(
    oidc_client: tuple[httpx.AsyncClient, HubState], provider: Provider, overrides: dict[str, Any], code: str
) -> None:
    client, hub = oidc_client
    await _maker(hub)(RoleName.RESEARCHER, email="dr.who@example.org")
    r = await client.get("/api/users/me", headers={"Authorization": f"Bearer {provider.token(**overrides)}"})
    assert r.status_code == 401
    assert r.json()["code"] == code


async def test_token_signed_by_another_key_is_refused(
    oidc_client: tuple[httpx.AsyncClient, HubState], provider: Provider
) -> None:
    client, hub = oidc_client
    await _maker(hub)(RoleName.RESEARCHER, email="dr.who@example.org")
    forger = Provider()
    r = await client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {forger.token(email='dr.who@example.org')}"}
    )
    assert r.status_code == 401
    assert r.json()["code"] == "invalid_token"


def _maker(hub: HubState) -> MakeUser:
    return make_user_factory(hub)
