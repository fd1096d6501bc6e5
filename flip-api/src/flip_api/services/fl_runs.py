"""Running training jobs on FL nets: the scheduler and watchdog (worker), and what nets report back.

**Scheduler** (one worker tick, per enabled net):

1. *Net info*: ask the net for its fleet address and CA certificate (what trusts need to dial it).
2. *SuperNode keys*: register every trust's FL client key on the net under the trust's code, once per
   key (``fl_net_nodes``), so that a trust's SuperNode can join before any job needs it.
3. *The net's job*: a BUSY net has one job. A PREPARING job is submitted: its clean files go to the net,
   which bundles them with FLIP's template and answers with the run and the bundle's sha256 (a submit is
   idempotent per job, so a crash between submit and commit is harmless). A live job is watched: each
   answer from the net is a sign of life; a run the net says has ended without the end being reported
   becomes ERROR with the run's sanitised log tail; a job silent for too long, or running too long,
   becomes ERROR and its run is stopped. A job that ended (any way) has its run stopped on the net
   (a no-op if it has finished) and the net is released.
4. *Assignment*: an AVAILABLE net takes the oldest QUEUED job of its backend, preferring projects with
   fewer jobs running (FIFO with per-project fairness), under ``FOR UPDATE SKIP LOCKED``.

**Reports** (the FL server, with the net key): typed run events, stored once each; ``run_started``
makes the job RUNNING, ``run_failed`` ERROR and ``run_completed`` RESULTS_UPLOADED when the final model
(whose sha256 must match) and its lineage were uploaded, else RESULTS_UPLOAD_FAILED. Reports about a job
that already ended (e.g. STOPPED) are ignored, so a stopped model stays stopped.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flip_api.core.errors import Conflict, NotFound, Unprocessable
from flip_api.core.state import HubState
from flip_api.db.models import (
    CohortSnapshot,
    FileStatus,
    FlEvent,
    FlJob,
    FlNet,
    FlNetNode,
    FlResult,
    JobType,
    Model,
    ModelFile,
    ModelStatus,
    NetStatus,
    Trust,
)
from flip_api.db.session import transaction
from flip_api.services import audit
from flip_api.services.audit import Actor
from flip_api.services.fl_nets import NetClient, NetError, key_fingerprint, net_key, now
from flip_api.services.model_files import PayloadTooLarge
from flip_api.services.models import ACTIVE_MODEL_STATES, MODEL_SUBJECT
from flip_core.fl_events import RunCompleted, RunEvent, RunFailed, RunStarted, sanitise

log = logging.getLogger(__name__)

MODEL_RESULT = "model.pt"
LINEAGE_RESULT = "lineage.json"
RESULT_NAMES = (MODEL_RESULT, LINEAGE_RESULT)
LIVE_ON_NET = (ModelStatus.PREPARING, ModelStatus.RUNNING)
WORKER = Actor.system("worker")


@dataclass
class SchedulerReport:
    assigned: int = 0  # jobs a net took off the queue
    submitted: int = 0  # runs started on a net
    failed: int = 0  # jobs the watchdog (or a refusing net) made ERROR
    released: int = 0  # nets freed after their job ended
    nodes_registered: int = 0  # trust SuperNode keys registered on a net


def result_key(job_id: uuid.UUID, name: str) -> str:
    return f"results/{job_id}/{name}"


# --------------------------------------------------------------------------------------------- worker


async def tick(hub: HubState) -> SchedulerReport:
    """One pass over every enabled net (see the module docstring)."""
    report = SchedulerReport()
    async with transaction(hub.sessions) as db:
        nets = [
            (n.id, n.endpoint, net_key(hub.data_key, n))
            # A disabled net takes no new job, but the job it still runs is watched to its end.
            for n in (
                await db.scalars(
                    select(FlNet).where(or_(FlNet.status != NetStatus.DISABLED, FlNet.current_job_id.is_not(None)))
                )
            ).all()
        ]
    for net_id, endpoint, key in nets:
        try:
            async with NetClient(endpoint, key) as client:
                await _net(hub, net_id, client, report)
        except Exception:
            log.exception("FL net tick failed", extra={"net_id": str(net_id)})
    return report


async def _net(hub: HubState, net_id: uuid.UUID, client: NetClient, report: SchedulerReport) -> None:
    reachable = await _refresh(hub, net_id, client)
    if reachable:
        report.nodes_registered += await _register_nodes(hub, net_id, client)
    await _watch(hub, net_id, client, reachable, report)
    if reachable and await _assign(hub, net_id):
        report.assigned += 1
        await _watch(hub, net_id, client, reachable, report)  # submit it now rather than next tick


async def _refresh(hub: HubState, net_id: uuid.UUID, client: NetClient) -> bool:
    try:
        health = await client.health()
    except NetError as exc:
        async with transaction(hub.sessions) as db:
            net = await db.get(FlNet, net_id)
            if net is not None:
                net.last_error = exc.message
        return False
    async with transaction(hub.sessions) as db:
        net = await db.get(FlNet, net_id)
        if net is not None:
            net.fleet_address = health.fleet_address
            net.ca_cert = health.ca_cert
            net.last_seen_at = now()
            net.last_error = None if health.status == "healthy" else f"the net reports {health.status}"
    return health.status == "healthy"


async def _register_nodes(hub: HubState, net_id: uuid.UUID, client: NetClient) -> int:
    async with transaction(hub.sessions) as db:
        trusts = (await db.scalars(select(Trust).where(Trust.fl_node_key.is_not(None)))).all()
        known = {
            row.trust_id: row.key_sha256
            for row in (await db.scalars(select(FlNetNode).where(FlNetNode.net_id == net_id))).all()
        }
        todo = [
            (t.id, t.code, t.fl_node_key)
            for t in trusts
            if t.fl_node_key and known.get(t.id) != key_fingerprint(t.fl_node_key)
        ]
    registered = 0
    for trust_id, code, public_key in todo:
        assert public_key is not None
        try:
            await client.register_node(code, public_key)
        except NetError as exc:
            log.warning("could not register a SuperNode key", extra={"trust": code, "error": exc.message})
            continue
        async with transaction(hub.sessions) as db:
            row = await db.get(FlNetNode, (net_id, trust_id))
            if row is None:
                db.add(FlNetNode(net_id=net_id, trust_id=trust_id, key_sha256=key_fingerprint(public_key)))
            else:
                row.key_sha256 = key_fingerprint(public_key)
                row.registered_at = now()
        registered += 1
    return registered


async def _assign(hub: HubState, net_id: uuid.UUID) -> bool:
    """Give an AVAILABLE net the next job of its backend; True when one was taken."""
    async with transaction(hub.sessions) as db:
        net = await db.scalar(
            select(FlNet)
            .where(FlNet.id == net_id, FlNet.status == NetStatus.AVAILABLE)
            .with_for_update(skip_locked=True)
        )
        if net is None:
            return False
        running = (
            select(func.count())
            .select_from(FlJob)
            .where(FlJob.project_id == Model.project_id, FlJob.status.in_(LIVE_ON_NET))
            .correlate(Model)
            .scalar_subquery()
        )
        row = (
            await db.execute(
                select(FlJob, Model)
                .join(Model, Model.id == FlJob.model_id)
                .where(FlJob.status == ModelStatus.QUEUED, FlJob.backend == net.backend)
                .order_by(running, FlJob.queued_at)
                .limit(1)
                .with_for_update(of=FlJob, skip_locked=True)
            )
        ).first()
        if row is None:
            return False
        job, model = row
        at = now()
        job.status = ModelStatus.PREPARING
        job.net_id = net.id
        job.started_at = at
        job.last_seen_at = at
        model.status = ModelStatus.PREPARING
        net.status = NetStatus.BUSY
        net.current_job_id = job.id
        await audit.record(
            db, WORKER, "model.training_scheduled", MODEL_SUBJECT, model.id, {"job_id": str(job.id), "net": net.name}
        )
    return True


async def _watch(hub: HubState, net_id: uuid.UUID, client: NetClient, reachable: bool, report: SchedulerReport) -> None:
    async with transaction(hub.sessions) as db:
        net = await db.get(FlNet, net_id)
        job = await db.get(FlJob, net.current_job_id) if net is not None and net.current_job_id else None
        if net is None or job is None:
            if net is not None and net.status is NetStatus.BUSY:
                net.status = NetStatus.AVAILABLE  # its job was deleted
                net.current_job_id = None
            return
        job_id, status, run_id = job.id, job.status, job.run_id
    if status not in LIVE_ON_NET:
        if await _release(hub, net_id, job_id, client, reachable):
            report.released += 1
        return
    if status is ModelStatus.PREPARING and run_id is None:
        if reachable:
            await _submit(hub, job_id, client, report)
        await _bounds(hub, job_id, report)
        return
    await _check_run(hub, job_id, client, report)
    await _bounds(hub, job_id, report)


async def _release(hub: HubState, net_id: uuid.UUID, job_id: uuid.UUID, client: NetClient, reachable: bool) -> bool:
    """The net's job has ended: stop its run (if it has one and it still runs), keep its log, free the net."""
    if not reachable:
        return False
    async with transaction(hub.sessions) as db:
        job = await db.get(FlJob, job_id)
        has_run = job is not None and job.run_id is not None
    tail = ""
    if has_run:
        try:
            answer = await client.stop(job_id)
            tail = str(answer.get("log_tail", ""))
        except NetError as exc:
            if exc.unreachable:
                return False  # try again next tick; the net stays BUSY meanwhile
            # 404: the net never started it.
    async with transaction(hub.sessions) as db:
        net = await db.get(FlNet, net_id)
        job = await db.get(FlJob, job_id)
        if job is not None and tail and not job.log_tail and job.status is not ModelStatus.RESULTS_UPLOADED:
            job.log_tail = tail
        if net is not None and net.current_job_id == job_id:
            net.current_job_id = None
            if net.status is NetStatus.BUSY:
                net.status = NetStatus.AVAILABLE
    return True


async def _submit(hub: HubState, job_id: uuid.UUID, client: NetClient, report: SchedulerReport) -> None:
    async with transaction(hub.sessions) as db:
        job = await db.get(FlJob, job_id)
        if job is None or job.status is not ModelStatus.PREPARING:
            return
        model = await db.get(Model, job.model_id)
        assert model is not None
        files = (
            await db.scalars(
                select(ModelFile).where(ModelFile.model_id == model.id, ModelFile.status == FileStatus.CLEAN)
            )
        ).all()
        keys = {f.name: f.object_key for f in files if f.object_key}
        codes = await _trust_codes(db, job.trust_ids)
        run_config = _run_config(job, model, codes)
    try:
        contents = {name: await asyncio.to_thread(_read_b64, hub, key) for name, key in keys.items()}
    except Exception as exc:
        await _fail(hub, job_id, f"the model's files could not be read from the object store: {type(exc).__name__}")
        report.failed += 1
        return
    try:
        answer = await client.submit(job_id, contents, run_config)
    except NetError as exc:
        if exc.unreachable:
            return  # the net is away: retried next tick, within FLIP_FL_PREPARE_TIMEOUT_S
        await _fail(hub, job_id, f"the FL net refused the job: {exc.message}")
        report.failed += 1
        return
    async with transaction(hub.sessions) as db:
        job = await db.get(FlJob, job_id)
        if job is None:
            return
        job.run_id = str(answer.get("run_id", ""))
        job.bundle_sha256 = str(answer.get("bundle_sha256", "")) or None
        job.last_seen_at = now()
        await audit.record(
            db,
            WORKER,
            "model.training_submitted",
            MODEL_SUBJECT,
            job.model_id,
            {"job_id": str(job.id), "run_id": job.run_id, "bundle_sha256": job.bundle_sha256},
        )
    report.submitted += 1


def _read_b64(hub: HubState, key: str) -> str:
    return base64.b64encode(b"".join(hub.objects.open_chunks(key))).decode("ascii")


async def _trust_codes(db: AsyncSession, trust_ids: list[str]) -> list[str]:
    ids = [uuid.UUID(t) for t in trust_ids]
    rows = {t.id: t.code for t in (await db.scalars(select(Trust).where(Trust.id.in_(ids)))).all()}
    return [rows[i] for i in ids if i in rows]


def _run_config(job: FlJob, model: Model, codes: list[str]) -> dict[str, Any]:
    config = job.config
    return {
        "job_type": model.job_type.value,
        "strategy": str(config.get("strategy", "")),
        "rounds": int(config.get("rounds", 1)),
        "selected": codes,
        "min_clients": int(config.get("min_clients", len(codes))),
        "round_timeout_s": float(config.get("round_timeout_s", 600)),
        "seed": int(config.get("seed", 0)),
        "final_evaluation": model.job_type is not JobType.EVALUATION,
        "project_id": str(job.project_id),
        # The researcher's settings from the request; config.json's apply where these are not given.
        "job_config": {k: config[k] for k in ("local_epochs", "learning_rate") if config.get(k) is not None},
    }


async def _check_run(hub: HubState, job_id: uuid.UUID, client: NetClient, report: SchedulerReport) -> None:
    try:
        answer = await client.status(job_id)
    except NetError as exc:
        if exc.unreachable:
            return  # silence counts against FLIP_FL_RUN_SILENCE_S
        await _fail(hub, job_id, f"the FL net lost the run: {exc.message}")
        report.failed += 1
        return
    status = str(answer.get("status", ""))
    async with transaction(hub.sessions) as db:
        job = await db.get(FlJob, job_id)
        if job is None or job.status not in LIVE_ON_NET:
            return
        job.last_seen_at = now()
        if status in ("starting", "running") and job.status is ModelStatus.PREPARING:
            await _set_status(db, job, ModelStatus.RUNNING)
        if status != "finished":
            return
        # Finished on the net, but its end was not reported (or not yet): wait a grace period first.
        if job.finished_at is None:
            job.finished_at = now()
            return
        if now() - job.finished_at < timedelta(seconds=hub.settings.fl_report_grace_s):
            return
        sub = str(answer.get("sub_status", "")) or "ended"
        details = str(answer.get("details", ""))
        reason = f"the run ended ({sub}{': ' + details if details else ''}) without reporting its result"
        await _end(db, job, ModelStatus.ERROR, reason, log_tail=str(answer.get("log_tail", "")))
    report.failed += 1


async def _bounds(hub: HubState, job_id: uuid.UUID, report: SchedulerReport) -> None:
    settings = hub.settings
    async with transaction(hub.sessions) as db:
        job = await db.get(FlJob, job_id)
        if job is None or job.status not in LIVE_ON_NET:
            return
        at = now()
        reason = None
        started = job.started_at or job.queued_at
        if job.run_id is None and at - started > timedelta(seconds=settings.fl_prepare_timeout_s):
            reason = f"the FL net did not start the run within {int(settings.fl_prepare_timeout_s)} s"
        elif at - (job.last_seen_at or started) > timedelta(seconds=settings.fl_run_silence_s):
            reason = f"no sign of life from the run for {int(settings.fl_run_silence_s)} s"
        elif at - started > timedelta(seconds=settings.fl_run_max_s):
            reason = f"the run exceeded the longest allowed ({int(settings.fl_run_max_s)} s)"
        if reason is None:
            return
        await _end(db, job, ModelStatus.ERROR, reason)
    report.failed += 1


async def _fail(hub: HubState, job_id: uuid.UUID, reason: str) -> None:
    async with transaction(hub.sessions) as db:
        job = await db.get(FlJob, job_id)
        if job is not None and job.status in ACTIVE_MODEL_STATES:
            await _end(db, job, ModelStatus.ERROR, reason)


async def _set_status(db: AsyncSession, job: FlJob, status: ModelStatus) -> None:
    job.status = status
    model = await db.get(Model, job.model_id)
    if model is not None and model.status in ACTIVE_MODEL_STATES:
        model.status = status


async def _end(db: AsyncSession, job: FlJob, status: ModelStatus, reason: str | None, *, log_tail: str = "") -> None:
    await _set_status(db, job, status)
    job.reason = sanitise(reason) if reason else None
    job.finished_at = now()
    if log_tail:
        job.log_tail = log_tail
    action = {
        ModelStatus.ERROR: "model.training_failed",
        ModelStatus.RESULTS_UPLOADED: "model.training_completed",
        ModelStatus.RESULTS_UPLOAD_FAILED: "model.training_results_missing",
    }.get(status, "model.training_ended")
    await audit.record(db, WORKER, action, MODEL_SUBJECT, job.model_id, {"job_id": str(job.id), "reason": job.reason})


# -------------------------------------------------------------------------------------------- reports


async def _reported_job(db: AsyncSession, net: FlNet, job_id: str, *, lock: bool = True) -> FlJob:
    try:
        parsed = uuid.UUID(job_id)
    except ValueError as exc:
        raise NotFound("job not found", code="job_not_found") from exc
    query = select(FlJob).where(FlJob.id == parsed)
    if lock:
        query = query.with_for_update()
    job = await db.scalar(query)
    if job is None or job.net_id != net.id:
        raise NotFound("job not found on this net", code="job_not_found")
    return job


async def record_event(db: AsyncSession, net: FlNet, event: RunEvent, raw: bytes) -> bool:
    """Store one reported event and apply it; False when it was a repeat or the job had already ended."""
    job = await _reported_job(db, net, event.job_id)
    if job.status not in LIVE_ON_NET:
        return False
    digest = hashlib.sha256(raw).hexdigest()
    if await db.scalar(select(FlEvent.id).where(FlEvent.job_id == job.id, FlEvent.digest == digest)):
        return False
    db.add(
        FlEvent(
            job_id=job.id,
            event=event.event,
            round=getattr(event, "round", None),
            payload=event.model_dump(mode="json"),
            digest=digest,
            at=datetime.fromisoformat(event.at),
        )
    )
    job.last_seen_at = now()
    if isinstance(event, RunStarted):
        if job.status is ModelStatus.PREPARING:
            await _set_status(db, job, ModelStatus.RUNNING)
    elif isinstance(event, RunFailed):
        await _end(db, job, ModelStatus.ERROR, event.reason)
    elif isinstance(event, RunCompleted):
        await _complete(db, job, event)
    return True


async def _complete(db: AsyncSession, job: FlJob, event: RunCompleted) -> None:
    stored = {r.name: r for r in (await db.scalars(select(FlResult).where(FlResult.job_id == job.id))).all()}
    missing = [name for name in RESULT_NAMES if name not in stored]
    if missing:
        await _end(db, job, ModelStatus.RESULTS_UPLOAD_FAILED, f"the run ended but {', '.join(missing)} never arrived")
    elif stored[MODEL_RESULT].sha256 != event.model_sha256:
        await _end(db, job, ModelStatus.RESULTS_UPLOAD_FAILED, "the uploaded model does not match the run's model")
    else:
        await _end(db, job, ModelStatus.RESULTS_UPLOADED, None)


async def store_result(hub: HubState, net: FlNet, job_id: str, name: str, chunks: AsyncIterator[bytes]) -> FlResult:
    """Keep one result file the FL server uploads (before it reports ``run_completed``)."""
    if name not in RESULT_NAMES:
        raise Unprocessable(f"unknown result {name!r} (expected {', '.join(RESULT_NAMES)})", code="invalid_result")
    async with transaction(hub.sessions) as db:
        job = await _reported_job(db, net, job_id, lock=False)
        if job.status not in LIVE_ON_NET:
            raise Conflict(f"the job is {job.status.value}: results are no longer accepted", code="job_ended")
        project_id, model_id, trust_ids, job_uuid = job.project_id, job.model_id, job.trust_ids, job.id
        snapshots = await _snapshots(db, project_id, trust_ids)
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > hub.settings.upload_max_bytes:
            raise PayloadTooLarge(f"result is larger than this hub accepts ({hub.settings.upload_max_bytes} bytes)")
    data = bytes(body)
    if name == LINEAGE_RESULT:
        data = _hub_lineage(data, project_id=project_id, model_id=model_id, snapshots=snapshots)
    await asyncio.to_thread(
        hub.objects.put_stream, result_key(job_uuid, name), [data], max_bytes=hub.settings.upload_max_bytes
    )
    digest = hashlib.sha256(data).hexdigest()
    async with transaction(hub.sessions) as db:
        row = await db.get(FlResult, (job_uuid, name))
        if row is None:
            row = FlResult(job_id=job_uuid, name=name, bytes=len(data), sha256=digest)
            db.add(row)
        else:
            row.bytes, row.sha256 = len(data), digest
        live = await db.get(FlJob, job_uuid)
        if live is not None:
            live.last_seen_at = now()
    return row


async def _snapshots(db: AsyncSession, project_id: uuid.UUID, trust_ids: list[str]) -> dict[str, dict[str, Any]]:
    ids = [uuid.UUID(t) for t in trust_ids]
    rows = await db.execute(
        select(Trust.code, CohortSnapshot.sha256, CohortSnapshot.created_at)
        .join(Trust, Trust.id == CohortSnapshot.trust_id)
        .where(CohortSnapshot.project_id == project_id, CohortSnapshot.trust_id.in_(ids))
        .order_by(CohortSnapshot.created_at)
    )
    return {code: {"sha256": sha, "frozen_at": at.isoformat()} for code, sha, at in rows.all()}


def _hub_lineage(
    data: bytes, *, project_id: uuid.UUID, model_id: uuid.UUID, snapshots: dict[str, dict[str, Any]]
) -> bytes:
    try:
        lineage = json.loads(data)
    except ValueError as exc:
        raise Unprocessable("lineage.json is not JSON", code="invalid_result") from exc
    if not isinstance(lineage, dict):
        raise Unprocessable("lineage.json must be a JSON object", code="invalid_result")
    lineage["project_id"] = str(project_id)
    lineage["model_id"] = str(model_id)
    lineage["cohort_snapshots"] = snapshots  # what each trust trained on (the frozen cohort's digest)
    return (json.dumps(lineage, indent=2, sort_keys=True) + "\n").encode()


# ------------------------------------------------------------------------------------------ reading


async def job_of_model(db: AsyncSession, model_id: uuid.UUID, job_id: uuid.UUID) -> FlJob:
    job = await db.get(FlJob, job_id)
    if job is None or job.model_id != model_id:
        raise NotFound("job not found", code="job_not_found")
    return job


async def events(db: AsyncSession, job_id: uuid.UUID) -> list[FlEvent]:
    rows = await db.scalars(select(FlEvent).where(FlEvent.job_id == job_id).order_by(FlEvent.at, FlEvent.id))
    return list(rows.all())


async def results(db: AsyncSession, job_id: uuid.UUID) -> list[FlResult]:
    rows = await db.scalars(select(FlResult).where(FlResult.job_id == job_id).order_by(FlResult.name))
    return list(rows.all())


async def result(db: AsyncSession, job: FlJob, name: str) -> FlResult:
    row = await db.get(FlResult, (job.id, name))
    if row is None:
        raise NotFound(f"the job has no {name}", code="result_not_found")
    if job.status is not ModelStatus.RESULTS_UPLOADED:
        raise Conflict(f"the job is {job.status.value}: its results are not available", code="results_unavailable")
    return row
