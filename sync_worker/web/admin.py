"""The operator API under `/admin/api`, bearer ADMIN_TOKEN (see auth.py), JSON in and out.

Handlers are plain `def`: they make blocking Redis calls, and FastAPI runs such handlers in its
thread pool so the event loop keeps serving webhooks meanwhile.

    GET    /admin/api/dead-letters               ?reason= &user_id= &limit= &cursor= (paged)
    GET    /admin/api/dead-letters/{id}          ?triage=true adds the customer as Recur has it
    POST   /admin/api/dead-letters/{id}/replay   ?dry_run=true, optional edit body:
                                                 {"set": {"name": ..., "metadata.plan": ...},
                                                  "unset_external_id": false}
    POST   /admin/api/dead-letters/replay        {"reason"?, "user_id"?, "all"?, "dry_run"?}
    DELETE /admin/api/dead-letters/{id}
    GET    /admin/api/status
    GET    /admin/api/users/{user_id}            ?recur=true adds the customer as Recur has it
    GET    /admin/api/history                    ?minutes= (1..1440): per-minute series
    POST   /admin/api/resume
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Annotated, Any, Literal

import redis
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from sync_worker.deadletters.replay_edit import EditError, FieldEdits, build_edit
from sync_worker.deadletters.triage import triage
from sync_worker.logging import get_logger
from sync_worker.ops.status import gather_status
from sync_worker.replication import acknowledged
from sync_worker.runtime import Runtime
from sync_worker.settings import ConfigError
from sync_worker.telemetry import history
from sync_worker.web.auth import AdminError, admin_error_handler, require_bearer
from sync_worker.web.state import web_state

log = get_logger(__name__)
router = APIRouter(prefix="/admin/api", dependencies=[Depends(require_bearer)])

ReasonName = Literal["not_found", "conflict", "rejected", "retries_exhausted"]
REPLAY_STATUS = {"replayed": 202, "would_replay": 200, "stale": 200, "busy": 409, "missing": 404}
"""HTTP status of a single replay by its outcome."""


class ReplayFilter(BaseModel):
    """Which dead letters to replay: at least one filter, or `all`."""

    model_config = ConfigDict(extra="forbid")

    reason: ReasonName | None = None
    user_id: str | None = None
    all: bool = False
    dry_run: bool = False


class ReplayEdit(BaseModel):
    """An edit of the queued change before the replay (see replay_edit.py for the paths)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    set_values: dict[str, Any] = Field(default_factory=dict, alias="set")
    unset_external_id: bool = False


def _invalid_edit(error: EditError) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": "invalid_edit", "message": str(error), "errors": error.errors}},
        status_code=422,
    )


def _runtime(request: Request) -> Runtime:
    return web_state(request).runtime


def _not_found(entry_id: str) -> AdminError:
    return AdminError(404, "not_found", f"no dead letter {entry_id}")


def _require_replicated(request: Request) -> None:
    """503 unless REDIS_MIN_REPLICAS replicas hold what this request wrote (a failover must
    not undo an operator's replay, edit or delete)."""
    runtime = _runtime(request)
    settings = web_state(request).settings
    replicas = settings.min_replicas
    if not acknowledged(
        runtime.redis, replicas=replicas, timeout_ms=settings.redis_wait_timeout_ms
    ):
        log.warning("admin_action_not_replicated", path=request.url.path, replicas=replicas)
        raise AdminError(
            503,
            "not_replicated",
            f"done on the Redis primary but not yet held by {replicas} replica(s), so a "
            "failover could undo it: check the dead letter, then repeat if needed",
            headers={"Retry-After": "1"},
        )


async def _redis_error_handler(_request: Request, error: Exception) -> JSONResponse:
    log.warning("admin_redis_error", error=str(error))
    return JSONResponse(
        {"error": {"code": "redis_unavailable", "message": f"Redis: {error}"}}, status_code=503
    )


def install(app: FastAPI) -> None:
    """Mount the operator API on the app, with its JSON error handlers."""
    app.include_router(router)
    app.add_exception_handler(AdminError, admin_error_handler)
    # Blocking Redis calls in the operator handlers surface here; intake handles its own.
    app.add_exception_handler(redis.RedisError, _redis_error_handler)


@router.get("/dead-letters")
def list_dead_letters(
    request: Request,
    reason: ReasonName | None = None,
    user_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """A page of the dead letters matching the filters, newest failure first; `next_cursor`
    fetches the next page (null after the last)."""
    entries, after = _runtime(request).dlq.page(
        reason=reason, user_id=user_id, cursor=cursor, limit=limit
    )
    return {
        "data": [entry.to_dict() for entry in entries],
        "count": len(entries),
        "next_cursor": after,
    }


@router.get("/dead-letters/{entry_id}")
def get_dead_letter(
    request: Request, entry_id: str, triage_: bool = Query(False, alias="triage")
) -> dict[str, Any]:
    """One dead letter; with `?triage=true`, beside the last applied state and Recur's record."""
    runtime = _runtime(request)
    entry = runtime.dlq.get(entry_id)
    if entry is None:
        raise _not_found(entry_id)
    if not triage_:
        return entry.to_dict()
    try:
        recur, unavailable = runtime.recur, ""
    except ConfigError as error:
        recur, unavailable = None, f"not fetched from Recur: {error}"
    return triage(
        entry, ledger=runtime.ledger, recur=recur, recur_unavailable=unavailable
    ).to_dict()


@router.post("/dead-letters/replay")
def replay_by_filter(request: Request, body: ReplayFilter) -> dict[str, Any]:
    """Replay every dead letter matching the filter (Hookdeck's bulk retry of a filtered view)."""
    if not body.all and body.reason is None and body.user_id is None:
        raise AdminError(
            422, "filter_required", "give reason and/or user_id, or all: true to replay everything"
        )
    runtime = _runtime(request)
    ids = [e.id for e in runtime.dlq.find(reason=body.reason, user_id=body.user_id)]
    results = [runtime.dlq.replay(entry_id, dry_run=body.dry_run) for entry_id in ids]
    counts: Counter[str] = Counter(result.outcome for result in results)
    log.info("dead_letters_replayed", source="api", dry_run=body.dry_run, **counts)
    if counts.get("replayed"):
        _require_replicated(request)
    return {"counts": dict(counts), "results": [asdict(r) for r in results]}


@router.post("/dead-letters/{entry_id}/replay")
def replay_one(
    request: Request, entry_id: str, dry_run: bool = False, body: ReplayEdit | None = None
) -> JSONResponse:
    """Replay one dead letter: 202 replayed, 200 stale or dry run, 409 busy, 404 missing.

    With a body, the queued change is edited first and the edit kept in the entry's history
    (by `admin`, via `api`); 422 names each invalid value.
    """
    runtime = _runtime(request)
    edits = FieldEdits(body.set_values, body.unset_external_id) if body else FieldEdits()
    try:
        edit = None
        if edits:
            edit = build_edit(edits, actor={"by": "admin", "via": "api"}, ledger=runtime.ledger)
        result = runtime.dlq.replay(entry_id, dry_run=dry_run, edit=edit)
    except EditError as error:
        return _invalid_edit(error)
    if result.outcome == "missing":
        raise _not_found(entry_id)
    log.info(
        "dead_letter_replayed",
        source="api",
        id=entry_id,
        outcome=result.outcome,
        edited=sorted(edits.values) + (["-external_id"] if edits.unset_external_id else []),
    )
    if result.outcome == "replayed":
        _require_replicated(request)
    return JSONResponse(asdict(result), status_code=REPLAY_STATUS[result.outcome])


@router.delete("/dead-letters/{entry_id}")
def delete_dead_letter(request: Request, entry_id: str) -> dict[str, Any]:
    """Delete one dead letter for good."""
    if not _runtime(request).dlq.delete([entry_id]):
        raise _not_found(entry_id)
    log.info("dead_letter_deleted", source="api", id=entry_id)
    _require_replicated(request)
    return {"deleted": entry_id}


@router.get("/status")
def status(request: Request) -> dict[str, Any]:
    """The same snapshot as `sync-worker status --json`."""
    return gather_status(_runtime(request)).to_dict()


@router.post("/resume")
def resume(request: Request) -> dict[str, Any]:
    """Lift the auth pause by hand (after fixing RECUR_SECRET_KEY)."""
    resumed = _runtime(request).flow.resume()
    if resumed:
        log.info("sync_resumed", why="an operator resumed it", source="api")
    return {"resumed": resumed}


@router.get("/users/{user_id}")
def user_trace(request: Request, user_id: str, recur: bool = False) -> dict[str, Any]:
    """What happened to one user (the same as `sync-worker trace USER_ID --json [--recur]`)."""
    return _runtime(request).user_trace(user_id, with_recur=recur).to_dict()


@router.get("/history")
def history_series(
    request: Request,
    minutes: Annotated[int, Query(ge=1, le=history.MAX_MINUTES)] = history.MAX_MINUTES,
) -> dict[str, Any]:
    """Per-minute series of the last `minutes` minutes (default and at most 24 h), oldest first."""
    return history.read(_runtime(request).redis, minutes=minutes).to_dict()
