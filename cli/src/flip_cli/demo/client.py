"""A small synchronous client for the hub's REST API, as the demo's users and trusts see it.

It signs users in with the real flow (password, then TOTP enrolment with a code computed from the
secret the hub hands out) and turns every unexpected answer into a :class:`DemoError` that quotes the
hub's ``{"detail", "code"}`` body.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp

from flip_cli.demo.errors import DemoError
from flip_core.contract import PROTOCOL_HEADER, PROTOCOL_VERSION, TRUST_KEY_HEADER


@dataclass(frozen=True)
class SignedIn:
    """Tokens of a signed-in user, and the TOTP secret they enrolled (demo only: printed for the UI)."""

    access_token: str
    refresh_token: str
    totp_secret: str | None


def _describe(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        return f"{body['detail']} ({body.get('code', 'no code')})"
    return str(body)[:200]


class HubClient:
    """Calls the hub at ``base_url``; one connection pool for the whole demo."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        expect: Collection[int] = (200,),
    ) -> dict[str, Any]:
        """Send one request (a JSON body, or raw ``content``); return its JSON object body, or raise DemoError on
        any other outcome."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        try:
            response = self._http.request(method, path, headers=sent, json=json, content=content)
        except httpx.HTTPError as exc:
            raise DemoError(f"{method} {path} failed: {exc}") from exc
        if response.status_code not in expect:
            raise DemoError(f"{method} {path} answered {response.status_code}: {_describe(response)}")
        try:
            body = response.json()
        except ValueError as exc:
            raise DemoError(f"{method} {path} answered {response.status_code} without a JSON body") from exc
        if not isinstance(body, dict):
            raise DemoError(f"{method} {path} answered {type(body).__name__}, expected a JSON object")
        return body

    def get_json(self, path: str, *, token: str) -> Any:
        """GET ``path`` and return its JSON body, object or list (200 only)."""
        try:
            response = self._http.get(path, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise DemoError(f"GET {path} failed: {exc}") from exc
        if response.status_code != 200:
            raise DemoError(f"GET {path} answered {response.status_code}: {_describe(response)}")
        try:
            return response.json()
        except ValueError as exc:
            raise DemoError(f"GET {path} answered 200 without a JSON body") from exc

    def sign_in(self, email: str, password: str) -> SignedIn:
        """Password, then first-time TOTP enrolment: the flow a new user follows in the UI."""
        login = self.call("POST", "/api/auth/login", json={"email": email, "password": password})
        status = login.get("status")
        if status == "ok":  # MFA switched off (development only)
            tokens = _tokens(login.get("tokens"), "/api/auth/login")
            return SignedIn(tokens["access_token"], tokens["refresh_token"], None)
        if status != "mfa_enrolment_required":
            raise DemoError(f"login of {email} answered status {status!r}, expected 'mfa_enrolment_required'")
        mfa_token = login.get("mfa_token")
        if not isinstance(mfa_token, str):
            raise DemoError(f"login of {email} returned no mfa_token")
        enrolment = self.call("POST", "/api/auth/mfa/enrol", json={"mfa_token": mfa_token})
        secret = enrolment.get("secret")
        if not isinstance(secret, str) or not enrolment.get("otpauth_uri") or not enrolment.get("qr_svg"):
            raise DemoError(f"MFA enrolment of {email} did not return a secret, otpauth URI and QR code")
        code = pyotp.TOTP(secret).now()
        confirmed = self.call("POST", "/api/auth/mfa/enrol/confirm", json={"mfa_token": mfa_token, "code": code})
        tokens = _tokens(confirmed, "/api/auth/mfa/enrol/confirm")
        return SignedIn(tokens["access_token"], tokens["refresh_token"], secret)

    def whoami(self, api_key: str) -> dict[str, Any]:
        """The identity the hub resolves a trust API key to (the trust agent's start-up check)."""
        headers = {TRUST_KEY_HEADER: api_key, PROTOCOL_HEADER: PROTOCOL_VERSION}
        return self.call("GET", "/api/trust/whoami", headers=headers)


def _tokens(body: object, path: str) -> dict[str, str]:
    if not isinstance(body, dict):
        raise DemoError(f"{path} returned no tokens")
    access, refresh = body.get("access_token"), body.get("refresh_token")
    if not isinstance(access, str) or not isinstance(refresh, str):
        raise DemoError(f"{path} returned no access/refresh token")
    return {"access_token": access, "refresh_token": refresh}
