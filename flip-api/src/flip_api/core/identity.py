"""Who a bearer token belongs to: the built-in token issuer, or an external OIDC provider.

The hub's own tokens (issued after password + TOTP) are the embedded default.  A site that runs an
identity provider (Keycloak, Cognito, Entra ID) sets ``FLIP_OIDC_JWKS_URL`` and friends: access tokens
signed by that provider are then accepted too, verified against its published keys (JWKS), and mapped
to the local user with the same email — roles and grants always stay in FLIP's own tables, so the
permission model is identical whichever provider signed the user in.  With OIDC, MFA and session
revocation are the provider's responsibility.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import jwt
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import NotAuthenticated
from flip_api.core.security import JWT_ISSUER, InvalidToken, decode_token
from flip_api.db.models import AuthSession, User

OIDC_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]


@dataclass(frozen=True)
class VerifiedIdentity:
    user: User
    session_id: uuid.UUID | None
    provider: str


class TokenVerifier(Protocol):
    """Turns a bearer token into a local, enabled user, or raises :class:`NotAuthenticated`."""

    name: str

    def accepts(self, unverified_claims: dict[str, Any]) -> bool: ...

    async def verify(self, db: AsyncSession, token: str) -> VerifiedIdentity: ...


def _enabled(user: User | None) -> User:
    if user is None or not user.enabled:
        raise NotAuthenticated("account is disabled", code="account_disabled")
    return user


class BuiltinVerifier:
    """The hub's own HS256 access tokens, bound to a revocable session."""

    name = "builtin"

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def accepts(self, unverified_claims: dict[str, Any]) -> bool:
        return unverified_claims.get("iss") == JWT_ISSUER

    async def verify(self, db: AsyncSession, token: str) -> VerifiedIdentity:
        try:
            claims = decode_token(self._secret, token, kind="access")
            user_id = uuid.UUID(claims["sub"])
            session_id = uuid.UUID(claims["sid"])
        except (InvalidToken, KeyError, ValueError) as exc:
            raise NotAuthenticated(f"access token rejected: {exc}", code="invalid_token") from exc
        auth_session = await db.get(AuthSession, session_id)
        if auth_session is None or auth_session.user_id != user_id or auth_session.revoked_at is not None:
            raise NotAuthenticated("session has been revoked; sign in again", code="session_revoked")
        if auth_session.expires_at <= datetime.now(UTC):
            raise NotAuthenticated("session expired; sign in again", code="session_expired")
        return VerifiedIdentity(_enabled(await db.get(User, user_id)), session_id, self.name)


class OidcVerifier:
    """Access tokens from an external OpenID Connect provider, checked against its JWKS."""

    name = "oidc"

    def __init__(self, jwks_url: str, issuer: str, audience: str | None, email_claim: str = "email") -> None:
        self._jwks = jwt.PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=300, timeout=10)
        self.issuer = issuer
        self.audience = audience
        self.email_claim = email_claim

    def accepts(self, unverified_claims: dict[str, Any]) -> bool:
        return unverified_claims.get("iss") == self.issuer

    async def verify(self, db: AsyncSession, token: str) -> VerifiedIdentity:
        try:
            # Fetching the key set is blocking I/O (cached afterwards): keep it off the event loop.
            signing_key = await anyio.to_thread.run_sync(self._jwks.get_signing_key_from_jwt, token)
            claims: dict[str, Any] = jwt.decode(
                token,
                signing_key.key,
                algorithms=OIDC_ALGORITHMS,
                issuer=self.issuer,
                audience=self.audience,
                options={"require": ["exp", "iss", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.PyJWKClientError as exc:
            raise NotAuthenticated(f"identity provider keys unavailable: {exc}", code="invalid_token") from exc
        except jwt.PyJWTError as exc:
            raise NotAuthenticated(f"access token rejected: {exc}", code="invalid_token") from exc
        email = claims.get(self.email_claim)
        if not isinstance(email, str) or not email:
            raise NotAuthenticated(f"token has no {self.email_claim!r} claim", code="invalid_token")
        user = await db.scalar(select(User).where(func.lower(User.email) == email.strip().lower()))
        if user is None:
            raise NotAuthenticated("no FLIP account for this identity; request access first", code="unknown_identity")
        return VerifiedIdentity(_enabled(user), None, self.name)


class IdentityService:
    """Routes each token to the verifier whose issuer it names (unverified peek, then full check)."""

    def __init__(self, verifiers: list[TokenVerifier]) -> None:
        self._verifiers = verifiers

    async def verify(self, db: AsyncSession, token: str) -> VerifiedIdentity:
        try:
            peek: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise NotAuthenticated("access token rejected: token invalid", code="invalid_token") from exc
        for verifier in self._verifiers:
            if verifier.accepts(peek):
                return await verifier.verify(db, token)
        raise NotAuthenticated("access token from an unknown issuer", code="invalid_token")
