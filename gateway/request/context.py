"""What one request carries from stage to stage: :class:`RequestContext`.

Every stage reads and fills it in request order: admit (who is calling, the limits), read
(the body), plan (the decision and chain), dispatch (the expert that answered), respond
(status, usage) and record (the routing-log record). Nothing else holds per-request state.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.messages import MessageTexts, message_texts

if TYPE_CHECKING:
    from gateway.auth import RequestIds
    from gateway.config import APIKeyConfig
    from gateway.dispatch import Dispatcher
    from gateway.ratelimit import RateDecision
    from gateway.request.plan import Plan

__all__ = ["RequestContext", "header_value"]


class RequestContext:
    __slots__ = (
        "_ids",
        "_nonce",
        "_request_id",
        "_tenant",
        "_texts",
        "body",
        "chain",
        "client_gone",
        "client_request_id",
        "deadline",
        "degraded",
        "dispatcher",
        "endpoint",
        "err_type",
        "expert",
        "extra_cost_usd",
        "extra_tokens",
        "finished",
        "key",
        "key_id",
        "logged",
        "members",
        "plan",
        "queue_ms",
        "rates",
        "raw",
        "reason",
        "refused",
        "replica",
        "started",
        "status",
        "stream",
        "t0",
        "trying",
        "unaggregated",
        "upstream_ms",
        "usage",
    )

    def __init__(self, ids: RequestIds, endpoint: str, deadline_s: float, *, logged: bool
                 ) -> None:
        self.t0 = time.perf_counter()
        #: the request's deadline (time.monotonic()): the decision and every upstream attempt
        self.deadline = time.monotonic() + deadline_s
        self._ids = ids
        self._nonce = ids.nonce()
        self._request_id = ""
        self._tenant = "anonymous"
        self.endpoint = endpoint
        #: whether the routing log gets a record (generation endpoints): only then is the id
        #: one that feedback can name
        self.logged = logged
        #: the client's own x-request-id: logged and echoed, never the record's id
        self.client_request_id: str | None = None
        self.key: APIKeyConfig | None = None
        #: the key's rate-limit id (a digest prefix) and the decisions taken for it
        self.key_id = ""
        self.rates: list[RateDecision] = []
        self.raw = b""
        self.body: dict[str, Any] = {}
        self.stream = False
        self.plan: Plan | None = None
        #: the upstream pool of the configuration the request was planned with (a reload
        #: swaps both together; the request keeps the experts its plan names)
        self.dispatcher: Dispatcher | None = None
        #: why the request went where it went (x-expertgate-reason, the log)
        self.reason = ""
        #: the expert that answered, its replica, the experts the dispatcher was asked to try
        self.expert = ""
        self.replica = ""
        self.chain: list[str] = []
        #: the (expert, replica) of the upstream attempt under way, or last made
        self.trying: tuple[str, str] | None = None
        #: time spent in upstream calls (all attempts) for a non-streamed answer
        self.upstream_ms: float | None = None
        #: time the attempts waited for a concurrency slot (the gateway's queueing, not in
        #: ``upstream_ms``); None when no attempt answered
        self.queue_ms: float | None = None
        #: an ensemble's members that answered, what their calls cost beyond the answer's,
        #: and the best member's answer when the aggregation failed
        self.members: list[str] = []
        self.extra_cost_usd = 0.0
        self.extra_tokens = 0
        self.unaggregated: str | None = None
        #: what had to be done without, in order (x-expertgate-degraded, the log, metrics)
        self.degraded: list[str] = []
        #: the response's first byte went out
        self.started = False
        #: the response's last byte is on its way (the server's disconnect event that
        #: follows is not the client leaving)
        self.finished = False
        #: the client disconnected before the answer was complete
        self.client_gone = False
        #: the answer is the policy's refusal, written by the gateway (no upstream call)
        self.refused = False
        self.status = 500
        self.err_type: str | None = None
        self.usage = (0, 0)
        self._texts: MessageTexts | None = None

    def attempting(self, expert: str, replica: str) -> None:
        """The dispatcher's ``on_try``: an upstream attempt starts."""
        self.trying = (expert, replica)

    @property
    def tenant(self) -> str:
        return self._tenant

    @tenant.setter
    def tenant(self, name: str) -> None:
        self._tenant = name
        self._request_id = ""  # the id names its tenant: made once the tenant is known

    @property
    def request_id(self) -> str:
        """The gateway's id (see :class:`gateway.auth.RequestIds`): unguessable, and only
        the tenant that made the request can send feedback for it. A request that leaves no
        routing-log record (the dry run, feedback) gets a random id that verifies for no
        tenant, so no feedback can name it."""
        if not self._request_id:
            self._request_id = self._ids.request_id(self._nonce,
                                                    self._tenant if self.logged else None)
        return self._request_id

    def message_texts(self) -> MessageTexts:
        """(role, text) of the body's messages, extracted once for every stage that reads
        them (:mod:`gateway.messages`); empty without messages."""
        t = self._texts
        if t is None:
            msgs = self.body.get("messages")
            t = self._texts = message_texts(msgs) if isinstance(msgs, list) else []
        return t

    @property
    def policy(self) -> str:
        return self.plan.policy if self.plan is not None else ""


def header_value(s: str) -> str:
    """``s`` as a valid HTTP header value: one line, printable ASCII, at most 240 chars (a
    reason may quote client input, e.g. an unknown model name)."""
    s = " ".join(s.split())[:240]
    if s.isascii() and s.isprintable():  # the common case, without a per-character pass
        return s
    return "".join(c if " " <= c <= "~" else "?" for c in s)
