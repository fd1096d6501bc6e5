"""The hub's FL routes for trusts, as the agent reads and writes them."""

from __future__ import annotations

from pydantic import BaseModel, RootModel


class NodeKeyIn(BaseModel):
    public_key: str


class NodeKeyAck(BaseModel):
    trust_id: str
    changed: bool


class FlNetInfo(BaseModel):
    """A Flower net to dial: its fleet address and the CA certificate its TLS certificate chains to."""

    name: str
    backend: str
    fleet_address: str
    ca_cert: str


class FlNetList(RootModel[list[FlNetInfo]]):
    pass
