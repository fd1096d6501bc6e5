"""Every route of the data-access-api either lets out nothing, only gated counts, or row-level data that
is refused below the threshold — and this test finds any route that does otherwise.

It enumerates the application's routes (so a route added later is covered without editing this file),
requires each to declare its disclosure kind, and then:

* ``gated``: walks the response model's JSON schema; every integer or number must sit inside a
  ``GatedCount`` (the only allowed exceptions are listed, with the reason);
* ``none``: the response schema must hold no integer or number at all;
* ``row-level``: calls the route for a project frozen below the threshold and for one never approved,
  and expects the one fixed refusal or ``not_approved`` — never data.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_access_testing import make_service
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import BaseModel

from flip_core.contract import INTERNAL_KEY_HEADER
from flip_data_access.app import DISCLOSURE, create_app
from flip_data_access.gate import BELOW_THRESHOLD_MESSAGE
from flip_data_access.service import CohortService
from flip_data_access.snapshot import META, PARQUET, SnapshotMeta, SnapshotStore, _sha256

Harness = tuple[FastAPI, httpx.AsyncClient, CohortService]
INTERNAL_KEY = "flip_ik_" + "t" * 40
# Numbers that are not counts of anything: the threshold itself and the snapshot format.
NOT_COUNTS = {("CohortStatistics", "k"), ("CohortSnapshotInfo", "k"), ("StudyCountsResponse", "k")}


def _routes(app: FastAPI) -> list[APIRoute]:
    return [ctx.route for ctx in iter_route_contexts(app.router.routes) if isinstance(ctx.route, APIRoute)]


def _numeric_paths(schema: dict[str, Any], defs: dict[str, Any], where: str, owner: str, seen: set[str]) -> list[str]:
    """Paths of numeric fields outside a GatedCount, walking $refs, arrays, unions and dicts."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name == "GatedCount" or name in seen:
            return []
        return _numeric_paths(defs[name], defs, where, name, seen | {name})
    found: list[str] = []
    kind = schema.get("type")
    if kind in ("integer", "number"):
        field = where.rsplit(".", 1)[-1]
        if (owner, field) not in NOT_COUNTS:
            found.append(where)
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            found += _numeric_paths(option, defs, where, owner, seen)
    for name, sub in schema.get("properties", {}).items():
        found += _numeric_paths(sub, defs, f"{where}.{name}", owner, seen)
    if isinstance(schema.get("items"), dict):
        found += _numeric_paths(schema["items"], defs, f"{where}[]", owner, seen)
    if isinstance(schema.get("additionalProperties"), dict):
        found += _numeric_paths(schema["additionalProperties"], defs, f"{where}{{}}", owner, seen)
    return found


def _ungated_numbers(app: FastAPI, route: APIRoute) -> list[str]:
    openapi = app.openapi()
    operation = openapi["paths"][route.path][next(iter(route.methods)).lower()]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    return _numeric_paths(schema, openapi.get("components", {}).get("schemas", {}), route.path, "", set())


@pytest.fixture
async def app_and_client(omop_dsn: str, tmp_path: Path) -> AsyncIterator[Harness]:
    service = make_service(omop_dsn, tmp_path)
    app = create_app(service, INTERNAL_KEY)
    await service.db.open()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://data-access") as client:
            yield app, client, service
    finally:
        await service.db.close()


async def test_every_route_declares_what_it_discloses(
    app_and_client: Harness,
) -> None:
    app, _, _ = app_and_client
    routes = _routes(app)
    assert len(routes) >= 5
    for route in routes:
        kind = (route.openapi_extra or {}).get(DISCLOSURE)
        assert kind in ("gated", "row-level", "none"), f"{route.path} does not declare its disclosure kind"


async def test_aggregate_routes_release_numbers_only_as_gated_counts(
    app_and_client: Harness,
) -> None:
    app, _, _ = app_and_client
    checked = 0
    for route in _routes(app):
        kind = (route.openapi_extra or {}).get(DISCLOSURE)
        if kind in ("gated", "none"):
            assert _ungated_numbers(app, route) == [], f"{route.path} lets numbers out around the gate"
            checked += 1
    assert checked >= 3


def test_the_schema_walk_would_catch_an_ungated_number() -> None:
    """The check above can fail: a model with a bare int is reported."""

    class Leaky(BaseModel):
        total: int

    probe = FastAPI()

    @probe.get("/leaky", response_model=Leaky)
    def leaky() -> Leaky:
        return Leaky(total=3)

    (route,) = [r for r in _routes(probe) if r.path == "/leaky"]
    assert _ungated_numbers(probe, route) == ["/leaky.total"]


async def test_row_level_routes_refuse_below_k_and_unapproved_projects_alike(
    app_and_client: Harness, tmp_path: Path
) -> None:
    app, client, service = app_and_client
    headers = {INTERNAL_KEY_HEADER: INTERNAL_KEY}
    small = uuid.uuid4()
    _plant_small_snapshot(service.snapshots, small)
    row_level = [r for r in _routes(app) if (r.openapi_extra or {}).get(DISCLOSURE) == "row-level"]
    assert {r.path for r in row_level} >= {"/cohort/dataframe", "/cohort/accession-ids"}
    for route in row_level:
        below = await client.post(route.path, headers=headers, json={"project_id": str(small)})
        assert below.status_code == 403, route.path
        assert below.json() == {"detail": BELOW_THRESHOLD_MESSAGE, "code": "below_threshold"}, route.path
        never = await client.post(route.path, headers=headers, json={"project_id": str(uuid.uuid4())})
        assert never.status_code == 403, route.path
        assert never.json()["code"] == "not_approved"


async def test_every_route_but_health_needs_the_internal_key(
    app_and_client: Harness,
) -> None:
    app, client, _ = app_and_client
    for route in _routes(app):
        method = next(iter(route.methods))
        if route.path == "/health":
            assert (await client.request(method, route.path)).status_code == 200
            continue
        for headers in ({}, {INTERNAL_KEY_HEADER: "flip_ik_" + "x" * 40}):
            r = await client.request(method, route.path, headers=headers, json={"project_id": str(uuid.uuid4())})
            assert r.status_code == 401, route.path
            assert r.json()["code"] == "not_authenticated"


def _plant_small_snapshot(store: SnapshotStore, project: uuid.UUID) -> None:
    """A snapshot of 3 persons, as if frozen under a lower threshold: it must never be served."""
    folder = store.folder(project)
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"person_id": [1, 2, 3], "accession_id": ["A1", "A2", "A3"]}), folder / PARQUET)
    meta = SnapshotMeta(
        project_id=project,
        query_id=uuid.uuid4(),
        query_sha256="0" * 64,
        columns=["person_id", "accession_id"],
        rows=3,
        persons=3,
        person_key=0,
        parquet_sha256=_sha256(folder / PARQUET),
        bytes=(folder / PARQUET).stat().st_size,
        created_at=datetime.now(UTC),
        k=1,
    )
    (folder / META).write_text(meta.to_json(), encoding="utf-8")
