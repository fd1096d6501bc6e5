"""Machine routes called by trust agents: authenticated by the trust's API key, versioned by header."""

from __future__ import annotations

from fastapi import APIRouter

from flip_api.api.deps import MachineTrust
from flip_core.contract import TrustIdentity

router = APIRouter(prefix="/trust", tags=["trust machine"])


@router.get("/whoami", response_model=TrustIdentity)
async def whoami(trust: MachineTrust) -> TrustIdentity:
    """The trust this key belongs to; the agent compares it with its kit and exits on mismatch."""
    return TrustIdentity(trust_id=trust.id, code=trust.code, name=trust.name)
