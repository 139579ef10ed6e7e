"""Interactions: validating events, the Redis stream they are appended to, and interactions CSVs.

Keys (prefix `atelier:`):

    interactions        stream  one entry per accepted event: event_id, user_id, item_id, kind, ts
    interactions:ids    set     every event id ever accepted (the idempotency check)

An event is appended by one Redis script that adds its id to the set and, only if the id was
new, the entry to the stream: a retried call, a redelivered import batch, a file imported twice
or an overlapping re-export adds nothing (a CSV row's id is a hash of its user, item, kind and
time), and a crash leaves either both writes or neither. Nothing trims the stream.

Interactions CSVs have a header naming `user_id`, `item_id` and `timestamp` (Unix seconds or
ISO 8601), and optionally `kind` (view, click, cart, purchase; a row without one is a view).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

PREFIX = "atelier:"
STREAM = PREFIX + "interactions"
EVENT_IDS = PREFIX + "interactions:ids"
KINDS = ("view", "click", "cart", "purchase")
DEFAULT_KIND = "view"
MAX_ID_CHARS = 256
# Clients' clocks run a little ahead of Redis's host; a timestamp further ahead is refused.
MAX_CLOCK_SKEW_SECONDS = 300.0
MAX_EVENTS_PER_CALL = 10_000
CSV_COLUMNS = ("user_id", "item_id", "timestamp")
READ_BATCH = 10_000

# KEYS: the stream, the id set, then optionally a job hash and its failures hash.
# ARGV: now, the number of events n, 5n event fields (id, user, item, kind, ts), then for a job:
# the cursor the batch starts at, the cursor after it, rows in the batch, the failures cap, and
# (line, reason) pairs of refused rows.
# Returns per-event flags (1 new, 0 duplicate); for a job whose cursor moved on (another delivery
# recorded this batch) or that is gone, {-1} and nothing is written.
_APPEND = """
local now, n = ARGV[1], tonumber(ARGV[2])
local base = 3 + 5 * n
if #KEYS > 2 then
  local cursor = redis.call('HGET', KEYS[3], 'cursor')
  if not cursor or cursor ~= ARGV[base] then return {-1} end
end
local flags, accepted = {}, 0
for i = 0, n - 1 do
  local b = 3 + 5 * i
  if redis.call('SADD', KEYS[2], ARGV[b]) == 1 then
    redis.call('XADD', KEYS[1], '*', 'event_id', ARGV[b], 'user_id', ARGV[b + 1],
               'item_id', ARGV[b + 2], 'kind', ARGV[b + 3], 'ts', ARGV[b + 4])
    flags[i + 1] = 1
    accepted = accepted + 1
  else
    flags[i + 1] = 0
  end
end
if #KEYS > 2 then
  local cap = tonumber(ARGV[base + 3])
  local failed = 0
  for i = base + 4, #ARGV - 1, 2 do
    if redis.call('HLEN', KEYS[4]) < cap then redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]) end
    failed = failed + 1
  end
  redis.call('HSET', KEYS[3], 'cursor', ARGV[base + 1], 'updated', now)
  redis.call('HSETNX', KEYS[3], 'started', now)
  redis.call('HINCRBY', KEYS[3], 'rows', tonumber(ARGV[base + 2]))
  redis.call('HINCRBY', KEYS[3], 'done', accepted)
  redis.call('HINCRBY', KEYS[3], 'duplicates', n - accepted)
  redis.call('HINCRBY', KEYS[3], 'failed', failed)
  local ttl = tonumber(redis.call('HGET', KEYS[3], 'ttl'))
  redis.call('EXPIRE', KEYS[3], ttl)
  redis.call('EXPIRE', KEYS[4], ttl)
end
return flags
"""


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    kind: str
    timestamp: float


@dataclass(frozen=True)
class Outcome:
    """What happened to one event: "accepted", "duplicate" or "rejected", and why."""

    event_id: str
    outcome: str
    reason: str = ""


def _id_problem(name: str, value: str) -> str | None:
    if not value or not value.strip():
        return f"{name} is empty"
    if len(value) > MAX_ID_CHARS:
        return f"{name} is longer than {MAX_ID_CHARS} characters"
    if "\x00" in value:
        return f"{name} contains a NUL character"
    return None


def problem(event: Event, now: float) -> str | None:
    """Why an event is invalid on its own (its item is checked against a generation apart)."""
    for name in ("event_id", "user_id", "item_id"):
        reason = _id_problem(name, getattr(event, name))
        if reason:
            return reason
    if not event.kind:
        return f"kind is missing; expected one of {', '.join(KINDS)}"
    if event.kind not in KINDS:
        return f"unknown kind {event.kind[:40]!r}; expected one of {', '.join(KINDS)}"
    return timestamp_problem(event.timestamp, now)


def timestamp_problem(timestamp: float, now: float) -> str | None:
    if not math.isfinite(timestamp) or timestamp <= 0:
        return "timestamp must be a positive number of seconds since the Unix epoch"
    if timestamp > now + MAX_CLOCK_SKEW_SECONDS:
        return (
            f"timestamp {timestamp:.0f} is in the future "
            f"(more than {MAX_CLOCK_SKEW_SECONDS:.0f} s ahead)"
        )
    return None


def parse_timestamp(text: str) -> float:
    """Unix seconds ("1700000000", "1700000000.5") or ISO 8601 (UTC unless it names a zone)."""
    text = text.strip()
    if not text:
        raise ValueError("timestamp is empty")
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"timestamp {text[:40]!r} is neither Unix seconds nor ISO 8601") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def known_items(client: redis.Redis, version: int, item_ids: Sequence[str]) -> list[bool]:
    """Whether each id is an item of generation `version` (one round trip)."""
    if not item_ids:
        return []
    # atelier.store's slot map (see its layout): held items have a slot.
    return [v is not None for v in client.hmget(f"{PREFIX}gen:{version}:slots", list(item_ids))]


class InteractionLog:
    """The interactions stream and its idempotency set."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._append = client.register_script(_APPEND)

    def record(self, events: Sequence[Event], version: int, now: float) -> list[Outcome]:
        """Validate events against generation `version` and append the good ones, each once.

        Returns one Outcome per event, in order; nothing is raised for a bad event.
        """
        outcomes: list[Outcome | None] = [None] * len(events)
        candidates: list[int] = []
        for position, event in enumerate(events):
            reason = problem(event, now)
            if reason:
                outcomes[position] = Outcome(event.event_id, "rejected", reason)
            else:
                candidates.append(position)
        flags = known_items(self.redis, version, [events[p].item_id for p in candidates])
        good = []
        for position, known in zip(candidates, flags, strict=True):
            if known:
                good.append(position)
            else:
                item = events[position].item_id
                outcomes[position] = Outcome(
                    events[position].event_id,
                    "rejected",
                    f"unknown item {item[:80]!r} in generation {version}",
                )
        if good:
            written = self._run([events[p] for p in good], now)
            for position, new in zip(good, written, strict=True):
                event_id = events[position].event_id
                outcomes[position] = (
                    Outcome(event_id, "accepted")
                    if new
                    else Outcome(event_id, "duplicate", "this event id was recorded before")
                )
        return [o for o in outcomes if o is not None]

    def _run(self, events: Sequence[Event], now: float, keys=(), job_args=()) -> list[int]:
        args: list[str] = [repr(now), str(len(events))]
        for e in events:
            args += [e.event_id, e.user_id, e.item_id, e.kind, repr(float(e.timestamp))]
        flags = self._append(keys=[STREAM, EVENT_IDS, *keys], args=[*args, *job_args])
        return [int(f) for f in flags]

    def record_batch_for_job(
        self,
        job_key: str,
        events: Sequence[Event],
        cursor: int,
        next_cursor: int,
        rows: int,
        failures: Sequence[tuple[int, str]],
        now: float,
        failures_cap: int,
    ) -> bool:
        """Append a CSV batch and move its job's cursor, counts and failures in one atomic step.

        False when the job's cursor is not `cursor` any more (another delivery of the task
        recorded this batch) or the job is gone: nothing was written.
        """
        job_args = [str(cursor), str(next_cursor), str(rows), str(failures_cap)]
        for line, reason in failures:
            job_args += [str(line), reason]
        flags = self._run(events, now, (job_key, f"{job_key}:failed"), job_args)
        return not (flags and flags[0] == -1)

    def count(self) -> int:
        return int(self.redis.xlen(STREAM))

    def read(self, batch: int = READ_BATCH) -> Iterator[Event]:
        """Every event in the stream, oldest first, read in batches (the stream is never
        trimmed, so this is the whole history up to the moment each batch is read)."""
        start = "-"
        while True:
            entries = self.redis.xrange(STREAM, min=start, count=batch)
            for _entry_id, fields in entries:
                yield Event(
                    fields[b"event_id"].decode(),
                    fields[b"user_id"].decode(),
                    fields[b"item_id"].decode(),
                    fields[b"kind"].decode(),
                    float(fields[b"ts"]),
                )
            if len(entries) < batch:
                return
            start = "(" + entries[-1][0].decode()


# --- interactions CSVs ---


@dataclass(frozen=True)
class Row:
    """One CSV data row: its line (the header is line 1) and either an event or a reason."""

    line: int
    user_id: str = ""
    item_id: str = ""
    kind: str = ""
    timestamp: float = 0.0
    reason: str = ""


def file_digest(path: Path) -> str:
    """The file's SHA-256: an import resumes only over the very file it started on."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def csv_event_id(row: Row) -> str:
    """A CSV row's event id, from what it says (user, item, kind, time), not where it stands:
    a re-export that overlaps an imported file, or the same file again, adds only new rows."""
    content = "\x1f".join((row.user_id, row.item_id, row.kind, repr(float(row.timestamp))))
    return "csv:" + hashlib.sha256(content.encode()).hexdigest()[:32]


def read_header(path: Path) -> dict[str, int]:
    """Column positions from the header; ValueError naming what is missing."""
    with path.open(newline="", encoding="utf-8") as handle:
        header = _first_row(csv.reader(handle))
    return _columns(header)


def _first_row(reader) -> list[str] | None:
    try:
        return next(reader, None)
    except (csv.Error, UnicodeDecodeError) as exc:  # e.g. a "header" with no line break
        raise ValueError(f"line 1: unreadable CSV header ({str(exc)[:200]})") from None


def _columns(header: list[str] | None) -> dict[str, int]:
    if not header:
        raise ValueError("the file is empty; expected a header user_id,item_id,timestamp[,kind]")
    names = [h.strip().lower() for h in header]
    missing = [c for c in CSV_COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"line 1: the header lacks {', '.join(missing)}; "
            "expected user_id,item_id,timestamp[,kind]"
        )
    wanted = (*CSV_COLUMNS, "kind")
    return {name: names.index(name) for name in wanted if name in names}


def iter_rows(path: Path, start_line: int = 2) -> Iterator[Row]:
    """Data rows from line `start_line` on, each parsed or with the reason it is refused."""
    with path.open(newline="", encoding="utf-8", errors="strict") as handle:
        reader = csv.reader(handle)
        columns = _columns(_first_row(reader))
        width = max(columns[name] for name in CSV_COLUMNS) + 1  # kind may be left off
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                # csv cannot resynchronise reliably after a framing error: stop at that line.
                raise ValueError(f"line {reader.line_num + 1}: unreadable CSV ({exc})") from None
            line = reader.line_num
            if line < start_line:
                continue
            if not values or all(not v.strip() for v in values):
                continue
            yield parse_row(line, values, columns, width)


def parse_row(line: int, values: list[str], columns: dict[str, int], width: int) -> Row:
    if len(values) < width:
        return Row(line, reason=f"expected at least {width} fields, got {len(values)}")
    user_id = values[columns["user_id"]].strip()
    item_id = values[columns["item_id"]].strip()
    for name, value in (("user_id", user_id), ("item_id", item_id)):
        reason = _id_problem(name, value)
        if reason:
            return Row(line, reason=reason)
    try:
        timestamp = parse_timestamp(values[columns["timestamp"]])
    except ValueError as exc:
        return Row(line, reason=str(exc))
    position = columns.get("kind", len(values))
    kind = values[position].strip().lower() if position < len(values) else ""
    kind = kind or DEFAULT_KIND
    if kind not in KINDS:
        return Row(line, reason=f"unknown kind {kind[:40]!r}; expected one of {', '.join(KINDS)}")
    return Row(line, user_id, item_id, kind, timestamp)
