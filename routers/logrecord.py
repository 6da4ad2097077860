"""The routing log's records, typed once for the three places that meet them.

The gateway writes them (``gateway/request/record.py`` builds a :class:`RequestRecord` per
request, ``gateway/app.py`` the shadow and canary events), ``expertgate logs export`` joins
them with feedback into an :class:`ExportedRecord` table (Parquet or JSONL), and the loaders
read that table back (``evals.datasets.routing.load_logs`` for training,
``evals.offpolicy.load_logged`` for off-policy evaluation). This module lives in
``routers``, below both ``gateway`` and ``evals``, so neither has to import the other to
agree on a field.

Every record is one JSON object. ``endpoint`` says which kind it is: a served request
(``chat``, ``completions``, ``embeddings``), a shadow decision (``shadow``) or a canary event
(``canary``); only served requests are training data (:data:`UNSERVED_ENDPOINTS`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from typing import Any, Literal, TypedDict

__all__ = [
    "JSON_FIELDS",
    "NO_POLICY",
    "REQUEST_FIELDS",
    "TRAINING_COLUMNS",
    "UNSERVED_ENDPOINTS",
    "CanaryEvent",
    "ExportedRecord",
    "FeedbackRecord",
    "LogRecord",
    "RequestRecord",
    "ShadowRecord",
    "json_field",
    "policy_groups",
    "policy_label",
    "policy_mix_warning",
    "repeated_requests",
    "repeated_requests_note",
]


class RequestRecord(TypedDict):
    """One served request (any endpoint), written after its response ended."""

    #: the gateway's id (unguessable, tenant-tagged); what feedback names
    request_id: str
    #: the client's own ``x-request-id``, kept for correlation only
    client_request_id: str | None
    ts: float
    tenant: str | None
    endpoint: str
    policy: str | None
    policy_version: str | None
    #: blake2b of the normalised routing text (the decision-cache key's text part)
    text_hash: str | None
    #: the routing text, only where the policy says ``log_prompts: true``
    text: str | None
    #: the decision's mode; ``explicit`` for a request that named an expert
    mode: str
    expert: str | None
    replica: str | None
    targets: list[str] | None
    scores: list[float | None] | None
    reason: str | None
    guard: dict[str, Any] | None
    cache: str | None
    status: Literal["ok", "error"]
    http_status: int
    error_type: str | None
    #: served by a fallback (``expert-fallback`` or ``rejected-to-fallback`` degraded)
    fallback: bool
    degraded: list[str] | None
    decision_ms: float | None
    latency_ms: float
    upstream_ms: float | None
    #: time spent waiting for the expert's concurrency slots (not upstream time)
    queue_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    stream: bool
    #: ``canary`` or ``incumbent`` while the policy runs a canary, else None
    arm: str | None
    # exploration (routers.explore.LOG_FIELDS): what off-policy evaluation reads
    propensity: float | None
    action_probs: dict[str, float] | None
    explored: bool | None
    greedy_expert: str | None
    candidates: list[str] | None
    router_version: str | None


class ShadowRecord(TypedDict):
    """A shadow candidate's decision for a request: logged and counted, never served. The
    request it shadows is the one of the same ``request_id`` (and tenant, text_hash)."""

    request_id: str | None
    tenant: str | None
    text_hash: str | None
    ts: float
    endpoint: Literal["shadow"]
    policy: str
    router_version: str
    mode: str
    expert: str | None
    served_expert: str | None
    agrees: bool
    reason: str | None
    targets: list[str]
    cache: str
    decision_ms: float | None


class CanaryEvent(TypedDict):
    """A canary's state change (an automatic revert)."""

    ts: float
    endpoint: Literal["canary"]
    policy: str
    status: str
    reason: str


LogRecord = RequestRecord | ShadowRecord | CanaryEvent


class FeedbackRecord(TypedDict):
    """A rating of a request, from the tenant that made it."""

    request_id: str
    tenant: str | None
    score: float
    ts: float
    comment: str | None


class ExportedRecord(RequestRecord):
    """A row of ``expertgate logs export``: the request joined with its rating.

    The fields of :data:`JSON_FIELDS` are JSON text in the export (Parquet has no type for
    them); :func:`json_field` reads them back.
    """

    feedback_score: float | None


#: every field of a request record, in order
REQUEST_FIELDS: tuple[str, ...] = tuple(RequestRecord.__annotations__)
#: nested fields, stored as JSON text in an export
JSON_FIELDS = ("targets", "scores", "guard", "degraded", "action_probs", "candidates")
#: the columns a loader needs to turn an export into training data
TRAINING_COLUMNS = ("request_id", "expert", "text", "feedback_score")
#: endpoints whose records were never served to a client (not training data)
UNSERVED_ENDPOINTS = ("shadow", "canary")


def json_field(value: Any) -> Any:
    """A :data:`JSON_FIELDS` value as written in an export (JSON text) or in the live log
    (already a list or dict); None for a missing or empty one."""
    if isinstance(value, str):
        return json.loads(value) if value else None
    return value


#: how a record without a policy (a request that named its expert) is labelled in counts
NO_POLICY = "(no policy)"


def policy_label(value: Any) -> str:
    """A record's ``policy`` as counted: the name, or :data:`NO_POLICY`."""
    return value if isinstance(value, str) and value else NO_POLICY


def policy_groups(policies: Iterable[Any], versions: Iterable[Any] | None = None
                  ) -> dict[str, dict[str, int]]:
    """Record counts by policy and, within one, by ``router_version`` ("-" for none)."""
    out: dict[str, dict[str, int]] = {}
    vs = versions if versions is not None else itertools.repeat(None)
    for p, v in zip(policies, vs, strict=False):
        ver = v if isinstance(v, str) and v else "-"
        by = out.setdefault(policy_label(p), {})
        by[ver] = by.get(ver, 0) + 1
    return out


def _counted(groups: dict[str, dict[str, int]]) -> str:
    parts = []
    for p, by in sorted(groups.items(), key=lambda kv: -sum(kv[1].values())):
        part = f"{p} {sum(by.values())}"
        if len(by) > 1:
            part += " (router versions " + ", ".join(f"{v} {k}" for v, k in by.items()) + ")"
        parts.append(part)
    return "; ".join(parts)


def policy_mix_warning(groups: dict[str, dict[str, int]]) -> str | None:
    """A warning when the records come from several policies (each chose its experts its own
    way; training or evaluating on the mix describes none of them) or from several router
    versions of one policy (retrained while logging); None for one of each."""
    if len(groups) > 1:
        return (f"warning: the records mix {len(groups)} policies ({_counted(groups)}); pass "
                "--policy NAME to use one policy's records")
    if groups and len(next(iter(groups.values()))) > 1:
        return (f"note: the records come from several router versions ({_counted(groups)}): "
                "the policy's router changed while logging")
    return None


def repeated_requests(request_ids: Iterable[Any]) -> list[bool]:
    """True for each record whose request id an earlier record already had: the same request
    logged again (a sink that failed after writing part of a batch gets the whole batch again,
    overlapping copies of a log). The gateway gives every request its own id, so such a record
    is a copy; a loader counts the request once. Records without an id repeat nothing: a
    loader passes None for records that were never served (canary events, and shadow
    decisions, which carry the id of the request they shadow)."""
    seen: set[str] = set()
    out = []
    for rid in request_ids:
        key = rid if isinstance(rid, str) and rid else None
        out.append(key is not None and key in seen)
        if key is not None:
            seen.add(key)
    return out


def repeated_requests_note(n: int) -> str:
    """What a loader says when it leaves out ``n`` repeated records."""
    return (f"{n} record(s) repeat the request id of an earlier one (the same request logged "
            "twice: a batch the log wrote again after a sink failure, or overlapping log "
            "files); each request is counted once")
