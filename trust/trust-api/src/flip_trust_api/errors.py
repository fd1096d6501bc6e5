"""Why the agent stops: the exceptions that end it, each mapping to one documented CLI exit code.

Everything that is the operator's to fix (an unreadable kit, a key the hub does not recognise, a kit
for another trust, a protocol the hub does not speak) is an :class:`AgentConfigError` and leaves the
``flip`` command with exit code 3.  Transient trouble (the hub is down, a task failed) never stops
the agent; it retries.
"""

from __future__ import annotations

import uuid


class AgentError(Exception):
    """Base class of the agent's own failures."""


class AgentConfigError(AgentError):
    """A configuration problem the operator must fix; the agent exits (``flip`` exit code 3)."""


class KitError(AgentConfigError):
    """The kit file is missing, unreadable or not a valid kit."""


class IdentityMismatch(AgentConfigError):
    """The hub resolved the kit's key to a different trust than the one named in the kit."""

    def __init__(self, kit_trust_id: uuid.UUID, hub_trust_id: uuid.UUID, where: str) -> None:
        super().__init__(
            f"identity mismatch ({where}): the kit is for trust {kit_trust_id} but the hub says this key "
            f"belongs to trust {hub_trust_id}; refusing to work (check that the kit file is the right one)"
        )
        self.kit_trust_id = kit_trust_id
        self.hub_trust_id = hub_trust_id


class FatalHubError(AgentConfigError):
    """The hub refused the agent itself (bad key, unsupported protocol): retrying cannot help."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"the hub refused this agent (HTTP {status}, {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail
