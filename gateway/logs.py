"""Routing log: one record per request, to a Redis Stream or a JSONL file; export to Parquet.

Requests never wait for the log: ``RoutingLog.record`` serialises the record and puts it on a
bounded queue, and a background task writes batches, gathering for up to ``linger_s`` after
the first record so that a busy gateway writes once per batch rather than once per request.
Queued records are copied to their exact size (orjson's output keeps a 4 KiB buffer, which
a queue of them would hold on to). When the sink fails (Redis down) records stay queued and
are retried; when the queue is full the oldest are dropped and counted
(``expertgate_log_records_dropped``), so memory stays bounded through any outage. At
shutdown the writer keeps trying for the drain timeout (a sink back within it loses
nothing); what it could not write by then is counted there too and said in one line.

The records and their fields are typed in :mod:`routers.logrecord` (``RequestRecord``,
``ShadowRecord``, ``CanaryEvent``, ``FeedbackRecord``; an export row is an
``ExportedRecord``): the gateway, this export and the loaders in ``evals`` share that one
definition.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from gateway.metrics import Metrics
from routers.logrecord import JSON_FIELDS, FeedbackRecord, LogRecord

__all__ = [
    "ExportStats",
    "JsonlSink",
    "LogReadError",
    "RedisStreamSink",
    "RoutingLog",
    "RoutingLogSink",
    "export_logs",
    "export_routing_log",
    "feedback_path_for",
    "read_feedback",
    "read_records",
]

log = logging.getLogger("expertgate.logs")

LOG_STREAM = "eg:log"
FEEDBACK_STREAM = "eg:feedback"


class RoutingLogSink(Protocol):
    name: str

    async def write(self, records: list[bytes]) -> None: ...

    async def write_feedback(self, record: bytes) -> None: ...

    async def close(self) -> None: ...


def _owner_only(path: Path) -> int:
    """An append descriptor of ``path``, created readable by its owner only when it does not
    exist: with ``log_prompts`` the routing log holds every prompt, and the umask (often 022)
    would make it world-readable; a file that exists keeps its mode (logrotate's ``create``)."""
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


class JsonlSink:
    """Appends one JSON object per line. Appends are small and fast, so done inline.

    The file may be moved or removed under the running gateway (logrotate's default
    ``create`` mode renames it and expects the program to write a new one): before each
    batch the path is compared with the open file, and when it names another file or none
    a new one is opened there, so records never go on into the renamed copy or vanish into
    a deleted inode (one ``stat`` per batch; what Python's ``WatchedFileHandler`` does).
    """

    name = "jsonl"

    def __init__(self, path: Path, feedback_path: Path) -> None:
        self.path = Path(path)
        self.feedback_path = Path(feedback_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.feedback_path.parent.mkdir(parents=True, exist_ok=True)
        self._f = self._open()

    def _open(self) -> Any:
        f = open(_owner_only(self.path), "ab", buffering=0)  # noqa: SIM115 (kept open)
        st = os.fstat(f.fileno())
        self._id = (st.st_dev, st.st_ino)
        return f

    def _reopen_if_moved(self) -> None:
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._id
        except FileNotFoundError:
            same = False
        if not same:
            f = self._open()  # an error here leaves the old file in place; the batch waits
            self._f.close()
            self._f = f
            log.info("routing log: %s was moved or removed; writing to a new file there",
                     self.path)

    async def write(self, records: list[bytes]) -> None:
        self._reopen_if_moved()
        self._f.write(b"".join(r + b"\n" for r in records))

    async def write_feedback(self, record: bytes) -> None:
        with open(_owner_only(self.feedback_path), "ab") as f:
            f.write(record + b"\n")

    async def close(self) -> None:
        self._f.close()


#: how far before a failed write the retry looks for its records in the stream (the
#: stream's ids come from the Redis server's clock, not this process's)
_CLOCK_SKEW_S = 5.0


def _request_id(record: bytes) -> Any:
    try:
        rec = orjson.loads(record)
    except orjson.JSONDecodeError:
        return None
    return rec.get("request_id") if isinstance(rec, dict) else None


class RedisStreamSink:
    """XADD to a capped stream (approximate MAXLEN) so Redis memory stays bounded too."""

    name = "redis"
    #: a record is ~1.3 KB in the stream (prompts not logged), so ~0.6 GB at the cap: under
    #: half of docker-compose.yml's `--maxmemory 2gb`. The stream cannot be evicted
    #: (volatile-lru), so a larger one evicted the rate-limit windows, then made Redis
    #: refuse writes (tests/integration/test_redis_memory_budget.py)
    DEFAULT_MAXLEN = 500_000

    def __init__(self, client: Any, stream: str = LOG_STREAM,
                 feedback_stream: str = FEEDBACK_STREAM, maxlen: int = DEFAULT_MAXLEN) -> None:
        self._r = client
        self.stream = stream
        self.feedback_stream = feedback_stream
        self.maxlen = maxlen
        #: when a write that failed was sent (time.time()): Redis may have run it and only
        #: its reply was lost (a stall past the socket timeout), so the next write first
        #: leaves out the records already in the stream since then
        self._unsure_since: float | None = None

    async def write(self, records: list[bytes]) -> None:
        t0 = time.time()
        if self._unsure_since is not None:
            records = await self._unwritten(records, self._unsure_since)
        pipe = self._r.pipeline(transaction=False)
        for rec in records:
            pipe.xadd(self.stream, {"r": rec}, maxlen=self.maxlen, approximate=True)
        try:
            if records:
                await pipe.execute()
        except BaseException:
            if self._unsure_since is None:
                self._unsure_since = t0
            raise
        self._unsure_since = None

    async def _unwritten(self, records: list[bytes], since: float) -> list[bytes]:
        """``records`` less those whose request id is in the stream since ``since`` (less
        :data:`_CLOCK_SKEW_S`: the stream's ids are the Redis server's clock)."""
        ids: set[Any] = set()
        start = f"{max(int((since - _CLOCK_SKEW_S) * 1000), 0)}-0"
        while True:
            chunk = await self._r.xrange(self.stream, min=start, max="+", count=1000)
            for _id, fields in chunk:
                ids.add(_request_id(fields.get(b"r", b"")))
            if len(chunk) < 1000:
                break
            last = chunk[-1][0]
            start = "(" + (last.decode() if isinstance(last, bytes) else str(last))
        ids.discard(None)
        return [r for r in records if _request_id(r) not in ids]

    async def write_feedback(self, record: bytes) -> None:
        await self._r.xadd(self.feedback_stream, {"r": record}, maxlen=self.maxlen,
                           approximate=True)

    async def close(self) -> None:
        return None


class RoutingLog:
    def __init__(self, sink: RoutingLogSink, metrics: Metrics, max_queue: int = 10_000,
                 batch: int = 256, linger_s: float = 0.02) -> None:
        self.sink = sink
        self.metrics = metrics
        self.max_queue = max_queue
        self.batch = batch
        self.linger_s = linger_s
        self._q: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        #: set by close(): a writer waiting to retry a failed sink tries again sooner
        self._closed = asyncio.Event()
        self.dropped = 0
        self.written = 0
        self.sink_ok = True
        #: ``dropped`` when the sink last failed: what the outage cost is said at recovery
        self._dropped_at_failure = 0
        self._warned_drop = False

    def record(self, rec: LogRecord) -> None:
        try:
            data = bytes(memoryview(orjson.dumps(rec, option=orjson.OPT_SERIALIZE_NUMPY)))
        except TypeError as e:  # a record the log cannot hold is lost, counted, never raised
            log.error("routing log: a record cannot be serialised (%s); dropped", e)
            self._drop(1)
            return
        if self._closing and (self._task is None or self._task.done()):
            self._drop(1)  # the writer has stopped: nothing would ever write it
            return
        if len(self._q) >= self.max_queue:
            self._q.popleft()
            self._drop(1)
            if not self._warned_drop:  # once per outage: the recovery line says how many
                self._warned_drop = True
                log.warning("routing log: %d records waiting for sink %s; dropping the "
                            "oldest (counted in expertgate_log_records_dropped_total)",
                            self.max_queue, self.sink.name)
        self._q.append(data)
        self._wake.set()

    def _drop(self, n: int) -> None:
        self.dropped += n
        self.metrics.log_dropped.inc(n)

    @property
    def pending(self) -> int:
        return len(self._q)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="routing-log")

    async def _flush_once(self) -> bool:
        if not self._q:
            return True
        n = min(len(self._q), self.batch)
        batch = [self._q[i] for i in range(n)]
        try:
            await self.sink.write(batch)
        except Exception as e:  # a sink outage must never reach requests
            if self.sink_ok:
                log.warning("routing log: sink %s failed (%s: %s); buffering up to %d records",
                            self.sink.name, type(e).__name__, e, self.max_queue)
                self._dropped_at_failure = self.dropped
            self.sink_ok = False
            return False
        if not self.sink_ok:
            lost = self.dropped - self._dropped_at_failure
            if lost:
                log.warning("routing log: sink %s is back; %d record(s) dropped meanwhile",
                            self.sink.name, lost)
            else:
                log.info("routing log: sink %s is back", self.sink.name)
        self.sink_ok = True
        for _ in range(n):
            # records dropped from the left while we awaited shift the batch; pop what remains
            if self._q:
                self._q.popleft()
        self.written += n
        self.metrics.log_queue.set(len(self._q))
        if not self._q:
            self._warned_drop = False  # caught up: the next overflow is news again
        return True

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if not self._closing and len(self._q) < self.batch:
                await asyncio.sleep(self.linger_s)  # let a batch gather: one write for it
            self._wake.clear()
            while self._q:
                ok = await self._flush_once()
                if not ok:
                    if self._closing:  # tried again every 0.1 s until close() gives up
                        await asyncio.sleep(0.1)
                    else:  # every 0.5 s, or at once when close() begins
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._closed.wait(), 0.5)
                elif self._q:
                    await asyncio.sleep(0)  # requests go on between batches

            if self._closing:
                return

    async def add_feedback(self, request_id: str, score: float, comment: str | None, *,
                           tenant: str) -> None:
        """Store a rating of ``request_id`` (the caller checked that ``tenant`` made it)."""
        rec: FeedbackRecord = {"request_id": request_id, "tenant": tenant, "score": score,
                               "ts": time.time(), "comment": comment}
        await self.sink.write_feedback(orjson.dumps(rec))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is queued, trying a failing sink again until ``timeout_s``, then
        stop; the records left are counted as dropped and said in one line."""
        self._closing = True
        self._wake.set()
        self._closed.set()
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout_s)
            if not self._task.done():
                self._task.cancel()  # a write in progress (a stalled Redis) ends here
                await asyncio.wait({self._task}, timeout=1.0)
        lost = len(self._q)
        if lost:
            self._q.clear()
            self._drop(lost)
            self.metrics.log_queue.set(0)
            log.warning("routing log: %d record(s) lost at shutdown: sink %s did not take "
                        "them within %.1fs (counted in expertgate_log_records_dropped_total)",
                        lost, self.sink.name, timeout_s)
        await self.sink.close()


# --------------------------------------------------------------------------- export


def feedback_path_for(log_path: Path) -> Path:
    """The feedback file the gateway writes beside the log ``log_path``
    (:attr:`gateway.config.Settings.feedback_file`: ``<stem>.feedback.jsonl``), for the live
    log or a rotated or compressed copy of it: a ``.gz`` suffix and a rotation number
    (``routing-log.1.jsonl``, ``routing-log.jsonl.1``) come off first. The gateway rotates
    neither file (an outside tool does), and ratings keep arriving in the one named after the
    live log, even for requests in a rotated copy: ``routing-log.1.jsonl`` and
    ``routing-log.jsonl.gz`` read ``routing-log.feedback.jsonl``."""
    log_path = Path(log_path)
    first, *rest = log_path.name.split(".")
    live = ".".join([first, *(x for x in rest if x.lower() != "gz" and not x.isdigit())])
    return log_path.with_name(Path(live).stem + ".feedback.jsonl")


def _read_jsonl(path: Path, skipped: collections.Counter[str] | None = None, *,
                warn: bool = True) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file (gzip-compressed when it ends in ``.gz``), one at a time.
    Lines that are not a JSON object are skipped, counted in ``skipped[str(path)]`` and
    warned about once (unless ``warn`` is false)."""
    if not path.exists():
        return
    bad, first = 0, 0
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rb") as f:
        try:
            for no, line in enumerate(f, 1):
                line = line.strip()
                if line:
                    try:
                        rec = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        rec = None
                    if isinstance(rec, dict):
                        yield rec
                    else:  # not JSON, or JSON that is no record (a list, a number)
                        bad += 1
                        first = first or no
        except EOFError:  # a compressed log cut short (still being written): keep what came
            bad += 1
            first = first or -1
    if bad:
        if warn:
            log.warning("skipped %d malformed line(s) in %s (%s)", bad, path,
                        "a truncated end" if first < 0 else f"the first is line {first}")
        if skipped is not None:
            skipped[str(path)] += bad


def _read_stream(redis_url: str, stream: str) -> list[dict[str, Any]]:
    return list(_iter_stream(redis_url, stream))


def _iter_stream(redis_url: str, stream: str, *, warn: bool = True
                 ) -> Iterator[dict[str, Any]]:
    """The records of a Redis stream, read 10,000 entries at a time."""
    import redis

    # bounded: an unreachable host is an error in seconds, not after the kernel's retries
    r = redis.Redis.from_url(redis_url, socket_connect_timeout=5)
    last = "-"
    try:
        while True:
            chunk = r.xrange(stream, min=last, max="+", count=10_000)
            if last != "-" and chunk:
                chunk = chunk[1:]
            if not chunk:
                break
            for _id, fields in chunk:
                try:
                    rec = orjson.loads(fields.get(b"r", b""))  # type: ignore[union-attr]
                except orjson.JSONDecodeError:
                    rec = None
                if isinstance(rec, dict):
                    yield rec
                elif warn:  # as a malformed line of the JSONL log: skipped, said
                    log.warning("skipping a malformed entry %s in the Redis stream %s",
                                _id.decode() if isinstance(_id, bytes) else _id, stream)
            last = chunk[-1][0].decode()  # type: ignore[union-attr]
    finally:
        r.close()


def read_records(*, redis_url: str | None = None, path: Path | None = None
                 ) -> list[dict[str, Any]]:
    if redis_url:
        return _read_stream(redis_url, LOG_STREAM)
    assert path is not None
    return list(_read_jsonl(path))


def _rating_problem(r: dict[str, Any]) -> str | None:
    """Why a feedback record cannot be joined (no request id; a score that is missing, not a
    number, not finite or outside [0, 1], the range ``POST /v1/feedback`` accepts), or None."""
    if r.get("request_id") is None:
        return "no request_id"
    v = r.get("score")
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"score {v!r} is not a number"
    if not (math.isfinite(v) and 0 <= v <= 1):
        return f"score {v!r} is outside [0, 1]"
    return None


def read_feedback(*, redis_url: str | None = None, path: Path | None = None,
                  skipped: collections.Counter[str] | None = None
                  ) -> dict[str, dict[str, Any]]:
    """request_id -> the latest valid feedback record. A rating that cannot be joined
    (:func:`_rating_problem`) is skipped with a warning naming its request id, and counted in
    ``skipped["ratings"]``; malformed lines in ``skipped[str(path)]``."""
    recs = _read_stream(redis_url, FEEDBACK_STREAM) if redis_url else list(
        _read_jsonl(path, skipped) if path is not None else [])
    out: dict[str, dict[str, Any]] = {}
    for r in recs:
        why = _rating_problem(r)
        if why:
            log.warning("skipping a rating of request %s in %s: %s", r.get("request_id"),
                        path or FEEDBACK_STREAM, why)
            if skipped is not None:
                skipped["ratings"] += 1
            continue
        out[str(r["request_id"])] = r
    return out


def _field_types() -> dict[str, tuple[type, ...]]:
    """Python types each field of a routing-log record may hold (from
    :class:`routers.logrecord.RequestRecord`'s annotations; a float field takes an int)."""
    import types
    import typing

    from routers.logrecord import RequestRecord

    def kinds(t: Any) -> tuple[type, ...]:
        origin = typing.get_origin(t)
        if origin in (typing.Union, types.UnionType):
            return tuple(k for a in typing.get_args(t) for k in kinds(a))
        if origin is typing.Literal:
            return tuple({type(a) for a in typing.get_args(t)})
        if t is type(None):
            return (type(None),)
        if t is float:
            return (float, int)
        base = origin or t
        return (base,) if isinstance(base, type) else (object,)

    return {k: kinds(t) for k, t in typing.get_type_hints(RequestRecord).items()}


_FIELD_TYPES: dict[str, tuple[type, ...]] | None = None


def _field_types_known() -> dict[str, tuple[type, ...]]:
    """:func:`_field_types`, worked out once."""
    global _FIELD_TYPES
    if _FIELD_TYPES is None:
        _FIELD_TYPES = _field_types()
    return _FIELD_TYPES


def _mistyped(rec: dict[str, Any]) -> str | None:
    """The first field of ``rec`` whose value has a type the record's schema does not allow
    (a damaged or foreign entry), or None."""
    known = _field_types_known()
    for k, v in rec.items():
        allowed = known.get(k)
        if allowed is not None and object not in allowed and (
                not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed)):
            return k  # (a bool is an int to isinstance, not to a Parquet integer column)
    return None


@dataclass
class ExportStats:
    """What :func:`export_routing_log` read, joined and left out."""

    #: records written
    written: int = 0
    #: valid ratings read (one per request id: the latest)
    ratings: int = 0
    #: ratings joined to a written record
    joined: int = 0
    #: valid ratings that match no written record (a request in another log file, an unknown
    #: id, another tenant's record); with ``tenant``, only that tenant's ratings count
    unmatched: int = 0
    #: ratings skipped: no request id, a score null, not a number or outside [0, 1]
    bad_ratings: int = 0
    #: lines of the log that are no JSON object (a truncated last line, damage)
    malformed_lines: int = 0
    #: lines of the feedback file that are no JSON object
    malformed_feedback_lines: int = 0
    #: record-shaped entries whose fields have the wrong types
    mistyped: int = 0
    #: the feedback file, when it does not exist (no record can have a rating)
    feedback_missing: Path | None = None


def export_logs(out: Path, *, redis_url: str | None = None,
                log_path: Path | Sequence[Path] | None = None,
                feedback_path: Path | Sequence[Path] | None = None,
                tenant: str | None = None) -> int:
    """:func:`export_routing_log`, returning the number of records written."""
    return export_routing_log(out, redis_url=redis_url, log_path=log_path,
                              feedback_path=feedback_path, tenant=tenant).written


#: rows an export holds before it writes them (with the ratings, its memory bound)
EXPORT_CHUNK_ROWS = 10_000


def _arrow_type(kinds: set[type]) -> Any:
    """The Parquet column type for values of these Python types (None aside): a mix that no
    one type holds is JSON text."""
    import pyarrow as pa

    kinds = kinds - {type(None)}
    if kinds <= {str}:
        return pa.string()
    if kinds == {bool}:
        return pa.bool_()
    if kinds <= {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    return None  # JSON text


class _ParquetChunks:
    """Writes an export's rows to Parquet one chunk at a time, with the columns (in the order
    first met) and types found by a first pass over the same records: a record's typed fields
    take their annotated type, other fields the type their values share."""

    def __init__(self, path: Path, columns: dict[str, set[type]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        known = _field_types_known()
        fields, self.as_json = [], set()
        for k, seen in columns.items():
            t = pa.string() if k in JSON_FIELDS else _arrow_type(
                set(known[k]) if k in known and object not in known[k] else seen)
            if t is None:
                t = pa.string()
                self.as_json.add(k)
            fields.append(pa.field(k, t))
        self.schema = pa.schema(fields)
        self._writer = pq.ParquetWriter(path, self.schema)

    def write(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa

        for r in rows:
            for k in self.as_json:
                v = r.get(k)
                if v is not None and not isinstance(v, str):
                    r[k] = orjson.dumps(v).decode()
        self._writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def close(self) -> None:
        self._writer.close()


class _JsonlChunks:
    def __init__(self, path: Path) -> None:
        self._f = path.open("wb")

    def write(self, rows: list[dict[str, Any]]) -> None:
        self._f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))

    def close(self) -> None:
        self._f.close()


class LogReadError(OSError):
    """A routing-log file that cannot be read (its message names the file)."""


def export_routing_log(out: Path, *, redis_url: str | None = None,
                       log_path: Path | Sequence[Path] | None = None,
                       feedback_path: Path | Sequence[Path] | None = None,
                       tenant: str | None = None) -> ExportStats:
    """Write the routing log joined with feedback (``feedback_score``) to Parquet (or JSONL
    when ``out`` ends in .jsonl); only ``tenant``'s records when given. A rating joins only
    the record of the tenant that sent it. A log ending in ``.gz`` is read through gzip.
    ``log_path`` may list several files (a live log and its rotated copies: their records in
    that order, one export), ``feedback_path`` several feedback files (a request's rating is
    the one read last). Nothing is written when no record is left. Returns the counts
    (:class:`ExportStats`); a log file that cannot be read raises :class:`LogReadError`.

    The log is streamed: records are read, joined and written :data:`EXPORT_CHUNK_ROWS` at a
    time (Parquet reads the log twice, first for its columns), so memory holds the ratings
    and one chunk whatever the log's size. The export is written beside ``out`` and moved
    into place when complete: a crash midway never leaves half an export under its name."""
    st = ExportStats()
    skipped: collections.Counter[str] = collections.Counter()

    paths = [] if log_path is None else [Path(log_path)] if isinstance(log_path, str | Path) \
        else [Path(x) for x in log_path]
    fpaths = [] if feedback_path is None else [Path(feedback_path)] if isinstance(
        feedback_path, str | Path) else list(dict.fromkeys(Path(x) for x in feedback_path))

    def records(warn: bool = True) -> Iterator[dict[str, Any]]:
        if redis_url:
            yield from _iter_stream(redis_url, LOG_STREAM, warn=warn)
            return
        for path in paths:
            try:
                yield from _read_jsonl(path, skipped if warn else None, warn=warn)
            except OSError as e:  # e.g. a .gz file that is not gzip
                raise LogReadError(f"cannot read {path}: {e}") from e

    def exportable(r: dict[str, Any], warn: bool = True) -> bool:
        if tenant is not None and r.get("tenant") != tenant:
            return False
        bad = _mistyped(r)
        if bad:  # one such record would make the whole Parquet table fail
            if warn:
                log.warning("skipping a routing-log record whose %s has the wrong type", bad)
                st.mistyped += 1
            return False
        return True

    if not redis_url and fpaths and not any(f.exists() for f in fpaths):
        st.feedback_missing = fpaths[0]
    if redis_url:
        fb = read_feedback(redis_url=redis_url, skipped=skipped)
    else:
        fb = {}
        for fpath in fpaths:
            fb.update(read_feedback(path=fpath, skipped=skipped))
    st.ratings, st.bad_ratings = len(fb), skipped["ratings"]
    out = Path(out)
    jsonl = out.suffix == ".jsonl"
    columns: dict[str, set[type]] = {}
    if not jsonl:  # Parquet's columns and their types, before the first chunk is written
        for r in records(warn=False):
            if exportable(r, warn=False):
                for k, v in r.items():
                    columns.setdefault(k, set()).add(type(v))
        columns["feedback_score"] = {float}
    used: set[str] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    # created as the export itself would be (mkstemp's would be private to its owner)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    tmp.open("xb").close()
    sink: _ParquetChunks | _JsonlChunks | None = None
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        nonlocal sink
        if sink is None:
            sink = _JsonlChunks(tmp) if jsonl else _ParquetChunks(tmp, columns)
        sink.write(rows)
        st.written += len(rows)
        rows.clear()

    try:
        for r in records():
            if not exportable(r):
                continue
            rid = str(r.get("request_id"))
            f = fb.get(rid)
            if f is not None and f.get("tenant", r.get("tenant")) != r.get("tenant"):
                f = None  # another tenant's rating (records from before feedback was checked)
            if f is not None:
                used.add(rid)
            r["feedback_score"] = None if f is None else float(f["score"])
            for k in JSON_FIELDS:
                if k in r and not isinstance(r[k], str | type(None)):
                    r[k] = orjson.dumps(r[k]).decode()
            rows.append(r)
            if len(rows) >= EXPORT_CHUNK_ROWS:
                flush()
        if rows:
            flush()
        if sink is not None:
            sink.close()
            os.replace(tmp, out)
    finally:
        if sink is not None:
            sink.close()  # a second close is a no-op
        tmp.unlink(missing_ok=True)
    st.malformed_lines = 0 if redis_url else sum(skipped[str(x)] for x in paths)
    st.malformed_feedback_lines = 0 if redis_url else sum(skipped[str(x)] for x in fpaths)
    st.joined = len(used)
    st.unmatched = sum(1 for rid, f in fb.items() if rid not in used
                       and (tenant is None or f.get("tenant") in (tenant, None)))
    return st
