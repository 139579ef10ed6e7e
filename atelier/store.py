"""The Redis layout: codes per (item, model version), model versions, the served-generation pointer and jobs.

Keys (prefix `atelier:`):

    model:{v}                     hash   model version metadata (latent_dim, image size, ε packed, ...)
    models                        set    the registered model versions (no keyspace SCAN to list them)
    served                        string the served model version (the generation pointer)
    gen:{v}:layout                string "{planes}:{items per block}": "2:4095" (μ and σ stored, z
                                         derived) for generations written since; absent for the
                                         first block layout, "3:4096" (μ, σ and z stored)
    gen:{v}:slots                 hash   item id -> "{slot}\x1f{metadata fingerprint}": where its
                                         code lives (the first block layout held the metadata itself)
    gen:{v}:next                  string the next free slot
    gen:{v}:live                  string bitmap: bit `slot` is set while the slot holds a live item
    gen:{v}:block:{b}             string the codes of slots b·B .. b·B+B−1 as little-endian float32
                                         planes (B items per block): μ, then σ (then z in the first
                                         block layout), written in place
    gen:{v}:ids:{b}               string "{item id}\n" per slot of block b, in slot order
    gen:{v}:meta:{b}              string "{metadata}\n" per slot of block b, in slot order
    gen:{v}:changes               stream upserts and deletes of the served generation, each with a
                                         sequence number (replicas apply them live; capped)
    gen:{v}:seq                   string the last change's sequence number
    gen:{v}:index                 hash   derived state for v, written once by the first replica that
                                         needs it: k-means centres, the category predictor
    job:{id}                      hash   job definition, the queued high-water mark, timestamps
    job:{id}:pending              list   the job's item ids in submission order; chunk i is a slice
    job:{id}:entry:{item}         hash   what to encode: image_ref or inline image, plus metadata;
                                         deleted once the item is recorded done or failed
    job:{id}:done                 set    item ids written (a set, so retries never double count)
    job:{id}:failed               hash   item id -> reason
    job:{id}:chunks               set    chunk indexes whose outcome is recorded
    job:{id}:deliveries           hash   "{chunk}:{attempt}" -> deliveries (the poison-chunk cap)
    job:{id}:pump                 string lock: one enqueueing pump per job at a time (expires)
    jobs:active                   set    job ids not finished yet (chunks to queue or to finish)

Codes are stored in bulk: a replica loads a generation with one GET per block of items, not one
round trip per item. An item costs its packed μ and σ, its id twice (the slot map and its block's
id list), its metadata once and a 16-character fingerprint of it. z = μ + σ⊙ε is not stored: ε is
the model version's, so z is derived on every read with the encoder's own float32 arithmetic (bit
for bit where ε comes from the model's files; behind a remote model server ε is recovered from a
probe and z agrees to within rounding). The store refuses a z that is not μ + σ⊙ε. A slot is taken once per (item, metadata):
rewriting an item with the same metadata rewrites its row in place, so re-running a task after a
crash rewrites the same bytes; an item whose metadata changed (or that was deleted and comes back)
takes a new slot and its old one is marked dead. Generations written in the first layout (one
hash per item) are migrated by `migrate_generation`. Job keys expire (the job's `ttl`, refreshed by
activity); codes belong to their generation and never expire.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis

from atelier.latent import fixed_eps_code

log = logging.getLogger(__name__)
PREFIX = "atelier:"
GENERATION_CHANNEL = PREFIX + "generation"
ACTIVE_JOBS = PREFIX + "jobs:active"
MODELS = PREFIX + "models"
JOB_PARTS = ("pending", "done", "failed", "chunks", "deliveries")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
# Items per block in new generations: at 64 dimensions μ and σ take 2 × 4095 × 256 bytes, which
# with Redis's string header still fits jemalloc's 2 MiB size class (4096 would cost 2.5 MiB).
BLOCK_ITEMS = 4095
STORED_PLANES = 2  # μ and σ; z is derived
ROW_VECTORS = 3  # μ, σ, z: a change's row
PLANES = ("mu", "sigma", "z")  # the planes a reader may ask for, in block order
UPSERT_BATCH = 1000  # items per upsert script call (Lua's unpack limit is 8000 arguments)
CHANGES_CAP = 200_000  # changes kept per served generation; a replica further behind reloads
SEP = b"\x1f"  # between an id or slot and the metadata
FIELD_SEP = "\x1e"  # between metadata fields
_FORBIDDEN = re.compile(r"[\x00-\x1f]")
_FORBIDDEN_IN_FIELD = re.compile(r"[\x00-\x1d\x1f]")  # _FORBIDDEN but FIELD_SEP
METADATA_FIELDS = (
    "article_type",
    "sub_category",
    "master_category",
    "gender",
    "usage",
    "season",
    "colour",
    "name",
    "image_ref",
)
_NO_VALUES = ("",) * len(METADATA_FIELDS)


def valid_job_id(job_id: str) -> bool:
    """Job ids are uuid4 hex (32 lowercase hex characters); nothing else becomes a Redis key."""
    return isinstance(job_id, str) and _JOB_ID.fullmatch(job_id) is not None


def job_key(job_id: str) -> str:
    if not valid_job_id(job_id):
        raise ValueError("a job id is 32 lowercase hex characters")
    return f"{PREFIX}job:{job_id}"


# One chunk's outcome. KEYS: the job, then JOB_PARTS in order, then the entry of every item
# recorded (done ones first). ARGV: now, chunk index or "", the number of done ids, the done ids,
# then (item id, reason) pairs of failures. Returns -1 for an unknown job, else items recorded.
_RECORD_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local now, chunk, ndone = ARGV[1], ARGV[2], tonumber(ARGV[3])
local entry = 7
for i = 1, ndone do
  redis.call('SADD', KEYS[3], ARGV[3 + i])
  redis.call('HDEL', KEYS[4], ARGV[3 + i])
  redis.call('DEL', KEYS[entry])
  entry = entry + 1
end
for i = 4 + ndone, #ARGV - 1, 2 do
  if redis.call('SISMEMBER', KEYS[3], ARGV[i]) == 0 then
    redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1])
  end
  redis.call('DEL', KEYS[entry])
  entry = entry + 1
end
if chunk ~= '' then redis.call('SADD', KEYS[5], chunk) end
redis.call('HSETNX', KEYS[1], 'started', now)
redis.call('HSET', KEYS[1], 'updated', now)
local recorded = redis.call('SCARD', KEYS[3]) + redis.call('HLEN', KEYS[4])
if recorded >= tonumber(redis.call('HGET', KEYS[1], 'total')) then
  redis.call('HSETNX', KEYS[1], 'finished', now)
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl'))
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ttl) end
return recorded
"""
# A delivery of one chunk attempt. KEYS: the job, its deliveries. ARGV: "{chunk}:{attempt}", now.
_BEGIN_CHUNK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local n = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('HSETNX', KEYS[1], 'started', ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(redis.call('HGET', KEYS[1], 'ttl')))
return n
"""
# The queued high-water mark only rises, so two enqueueing chains never skip a chunk.
_ADVANCE_QUEUED = """
local current = redis.call('HGET', KEYS[1], 'queued')
if not current then return -1 end
current = tonumber(current)
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('HSET', KEYS[1], 'queued', wanted)
  return wanted
end
return current
"""
# The codes of a generation, in packed blocks. A block holds its layout's planes (μ then σ, and z
# in the first block layout), each of its items per block, so a replica copies whole planes. The scripts derive their keys from
# ARGV[1], the generation's prefix: they run on a standalone Redis, never a cluster.
_CODES_LIB = """
local p, vecb, per, planes = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[7])
local slots, bits = p .. 'slots', p .. 'live'
redis.call('SET', p .. 'vector_bytes', vecb)
local function block_key(block) return p .. 'block:' .. block end
-- The metadata's fingerprint in the slot map (the first block layout held the metadata itself):
-- the first 16 hex digits of its SHA-1, as `fingerprint` computes it for the bulk path.
local function same_metadata(held_meta, meta)
  return held_meta == meta or held_meta == string.sub(redis.sha1hex(meta), 1, 16)
end
local function slot_value(slot, meta) return slot .. '\\31' .. string.sub(redis.sha1hex(meta), 1, 16) end
-- Write the vectors of `count` consecutive slots from `first` (all in one block): part(v) gives
-- plane v's bytes. A new block is allocated whole, once: growing it plane by plane would leave
-- Redis's greedy preallocation behind.
local function write_planes(first, count, part)
  local key = block_key(math.floor(first / per))
  if redis.call('EXISTS', key) == 0 then
    redis.call('SETRANGE', key, planes * per * vecb - 1, '\\0')
  end
  for v = 0, planes - 1 do
    redis.call('SETRANGE', key, v * per * vecb + (first % per) * vecb, part(v))
  end
end
-- Set the live bits of slots first .. first + n - 1.
local function set_live(first, n)
  local last = first + n - 1
  local lo, hi = math.ceil(first / 8), math.floor((last + 1) / 8) - 1
  if hi < lo then
    for slot = first, last do redis.call('SETBIT', bits, slot, 1) end
    return
  end
  for slot = first, lo * 8 - 1 do redis.call('SETBIT', bits, slot, 1) end
  redis.call('SETRANGE', bits, lo, string.rep('\\255', hi - lo + 1))
  for slot = (hi + 1) * 8, last do redis.call('SETBIT', bits, slot, 1) end
end
"""
# Upserts. ARGV: prefix, vector bytes, items per block, the served pointer's key, the version,
# stream cap, planes stored, then (id, metadata, row of the stored planes) triples. An item whose metadata is unchanged is
# rewritten in place (a retried chunk rewrites the same bytes); a new item, or one whose metadata
# changed, takes the next slot and its old slot is marked dead. Changes to the served generation
# go to its stream with a sequence number. Returns the number of items that took a new slot.
_UPSERT_CODES = (
    _CODES_LIB
    + """
local live = redis.call('GET', ARGV[4]) == ARGV[5]
local fresh = {}
for i = 8, #ARGV, 3 do
  local id, meta, row = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local held = redis.call('HGET', slots, id)
  local slot = nil
  if held then
    local sep = string.find(held, '\\31', 1, true)
    if same_metadata(string.sub(held, sep + 1), meta) then
      slot = tonumber(string.sub(held, 1, sep - 1))
    else
      redis.call('SETBIT', bits, tonumber(string.sub(held, 1, sep - 1)), 0)
    end
  end
  if slot then
    write_planes(slot, 1, function(v) return string.sub(row, v * vecb + 1, (v + 1) * vecb) end)
  else
    fresh[#fresh + 1] = i
  end
  if live then
    local seq = redis.call('INCR', p .. 'seq')
    redis.call('XADD', p .. 'changes', 'MAXLEN', '~', ARGV[6], '*',
      'seq', seq, 'op', 'u', 'id', id, 'meta', meta, 'row', row)
  end
end
if #fresh == 0 then return 0 end
local first = redis.call('INCRBY', p .. 'next', #fresh) - #fresh
local j = 1
while j <= #fresh do
  local slot = first + j - 1
  local last = math.min(#fresh, j + (per - slot % per) - 1)
  local ids, metas = {}, {}
  for k = j, last do
    local i = fresh[k]
    ids[#ids + 1] = ARGV[i]
    metas[#metas + 1] = ARGV[i + 1]
    redis.call('HSET', slots, ARGV[i], slot_value(first + k - 1, ARGV[i + 1]))
  end
  write_planes(slot, last - j + 1, function(v)
    local parts = {}
    for k = j, last do
      parts[#parts + 1] = string.sub(ARGV[fresh[k] + 2], v * vecb + 1, (v + 1) * vecb)
    end
    return table.concat(parts)
  end)
  set_live(slot, last - j + 1)
  local block = math.floor(slot / per)
  redis.call('APPEND', p .. 'ids:' .. block, table.concat(ids, '\\n') .. '\\n')
  redis.call('APPEND', p .. 'meta:' .. block, table.concat(metas, '\\n') .. '\\n')
  j = last + 1
end
return #fresh
"""
)
# The bulk path for items not held yet (a new catalogue, a migration): the same layout, with
# each column passed as one argument. ARGV: prefix, vector bytes, items per block, n, ids
# ("\n"-joined), metadata ("\n"-joined), planes stored, the metadata fingerprints (16
# characters each, concatenated: computed by the caller, off Redis's one thread), then each
# stored plane (n vectors each). Returns -1, writing nothing, when any of the items is held
# already (the caller then upserts). A batch within one block (the caller aligns them) appends
# its lists whole; only one that straddles blocks splits its metadata.
_APPEND_CODES = (
    _CODES_LIB
    + """
local n, fingerprints = tonumber(ARGV[4]), ARGV[8]
local ids = {}
for id in string.gmatch(ARGV[5], '[^\\n]+') do ids[#ids + 1] = id end
if #ids ~= n or #fingerprints ~= 16 * n or #ARGV[9] ~= n * vecb then
  return redis.error_reply('bad batch')
end
for _, held in ipairs(redis.call('HMGET', slots, unpack(ids))) do
  if held then return -1 end
end
local first = redis.call('INCRBY', p .. 'next', n) - n
local fields = {}
for k = 1, n do
  fields[#fields + 1] = ids[k]
  fields[#fields + 1] = (first + k - 1) .. '\\31' .. string.sub(fingerprints, 16 * k - 15, 16 * k)
  if #fields >= 4000 or k == n then
    redis.call('HSET', slots, unpack(fields))
    fields = {}
  end
end
local metas = nil
if math.floor(first / per) ~= math.floor((first + n - 1) / per) then
  metas = {}
  for meta in string.gmatch(ARGV[6] .. '\\n', '([^\\n]*)\\n') do metas[#metas + 1] = meta end
  if #metas ~= n then return redis.error_reply('bad batch') end
end
local j = 1
while j <= n do
  local slot = first + j - 1
  local last = math.min(n, j + (per - slot % per) - 1)
  write_planes(slot, last - j + 1, function(v)
    return string.sub(ARGV[9 + v], (j - 1) * vecb + 1, last * vecb)
  end)
  set_live(slot, last - j + 1)
  local block = math.floor(slot / per)
  local id_text = metas and table.concat(ids, '\\n', j, last) or ARGV[5]
  local meta_text = metas and table.concat(metas, '\\n', j, last) or ARGV[6]
  redis.call('APPEND', p .. 'ids:' .. block, id_text .. '\\n')
  redis.call('APPEND', p .. 'meta:' .. block, meta_text .. '\\n')
  j = last + 1
end
return n
"""
)
# Deletes. ARGV: prefix, the served pointer's key, the version, stream cap, then item ids.
# Returns the number of items deleted.
_DELETE_CODES = """
local p = ARGV[1]
local live = redis.call('GET', ARGV[2]) == ARGV[3]
local slots, bits, deleted = p .. 'slots', p .. 'live', 0
for i = 5, #ARGV do
  local held = redis.call('HGET', slots, ARGV[i])
  if held then
    local sep = string.find(held, '\\31', 1, true)
    redis.call('SETBIT', bits, tonumber(string.sub(held, 1, sep - 1)), 0)
    redis.call('HDEL', slots, ARGV[i])
    deleted = deleted + 1
    if live then
      local seq = redis.call('INCR', p .. 'seq')
      redis.call('XADD', p .. 'changes', 'MAXLEN', '~', ARGV[4], '*', 'seq', seq, 'op', 'd', 'id', ARGV[i])
    end
  end
end
return deleted
"""
# Line ARGV[1] (from 0) of the "\n"-terminated list at KEYS[1]: one item's metadata without
# sending its block's whole list.
_LINE_OF = """
local text = redis.call('GET', KEYS[1])
if not text then return false end
local start = 1
for i = 1, tonumber(ARGV[1]) do
  start = string.find(text, '\\n', start, true)
  if not start then return false end
  start = start + 1
end
local stop = string.find(text, '\\n', start, true)
if not stop then return false end
return string.sub(text, start, stop - 1)
"""
# A generation's layout, decided once and atomically (two writers starting a generation at once
# must agree). KEYS: its layout key, its next-slot key. ARGV: the layout for new generations,
# the first block layout (a generation with slots but no layout key), "1" to record it.
_CHOOSE_LAYOUT = """
local value = redis.call('GET', KEYS[1])
if value then return value end
if redis.call('EXISTS', KEYS[2]) == 1 then value = ARGV[2]
elseif ARGV[3] == '1' then value = ARGV[1]
else return false end
if ARGV[3] == '1' then redis.call('SET', KEYS[1], value) end
return value
"""
_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def pack(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def unpack(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<f4")


@dataclass(frozen=True)
class ItemRecord:
    item_id: str
    mu: np.ndarray
    sigma: np.ndarray
    z: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelRecord:
    version: int
    latent_dim: int
    image_height: int
    image_width: int
    data_hash: str
    epsilon: np.ndarray

    def to_hash(self) -> dict[str, str | bytes]:
        return {
            "version": str(self.version),
            "latent_dim": str(self.latent_dim),
            "image_height": str(self.image_height),
            "image_width": str(self.image_width),
            "data_hash": self.data_hash,
            "epsilon": pack(self.epsilon),
        }

    @classmethod
    def from_hash(cls, data: dict[bytes, bytes]) -> ModelRecord:
        return cls(
            version=int(data[b"version"]),
            latent_dim=int(data[b"latent_dim"]),
            image_height=int(data[b"image_height"]),
            image_width=int(data[b"image_width"]),
            data_hash=data[b"data_hash"].decode(),
            epsilon=unpack(data[b"epsilon"]).copy(),
        )


@dataclass(frozen=True)
class Layout:
    """How a generation's blocks are cut: the planes stored (μ and σ; z too in the first block
    layout) and the items per block."""

    planes: int
    block_items: int

    def encode(self) -> str:
        return f"{self.planes}:{self.block_items}"

    @classmethod
    def decode(cls, value: bytes | str) -> Layout:
        planes, block_items = (value.decode() if isinstance(value, bytes) else value).split(":")
        return cls(int(planes), int(block_items))

    @property
    def stores_z(self) -> bool:
        return self.planes == ROW_VECTORS


LAYOUT = Layout(STORED_PLANES, BLOCK_ITEMS)  # every generation written since
FIRST_BLOCK_LAYOUT = Layout(ROW_VECTORS, 4096)  # generations written before the layout key


@dataclass(frozen=True)
class CodeMatrix:
    """The live codes of one generation, row-aligned with item_ids (in slot order)."""

    version: int
    item_ids: list[str]
    mu: np.ndarray
    sigma: np.ndarray
    z: np.ndarray
    metadata: Sequence[dict[str, str]]
    position: tuple[int, str] = (0, "0-0")  # the last change included: (sequence, stream id)


class CodeStore:
    """Typed access to the Redis layout above. Holds no state besides the client and its scripts."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        self._record_chunk = client.register_script(_RECORD_CHUNK)
        self._begin_chunk = client.register_script(_BEGIN_CHUNK)
        self._advance_queued = client.register_script(_ADVANCE_QUEUED)
        self._set_if_exists = client.register_script(_SET_IF_EXISTS)
        self._upsert_codes = client.register_script(_UPSERT_CODES)
        self._delete_codes = client.register_script(_DELETE_CODES)
        self._append_codes = client.register_script(_APPEND_CODES)
        self._line_of = client.register_script(_LINE_OF)
        self._choose_layout = client.register_script(_CHOOSE_LAYOUT)

    @classmethod
    def from_url(cls, url: str) -> CodeStore:
        return cls(
            redis.Redis.from_url(
                url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=30
            )
        )

    # --- model versions and the generation pointer ---

    def register_model(self, record: ModelRecord) -> None:
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(f"{PREFIX}model:{record.version}", mapping=record.to_hash())
        pipe.sadd(MODELS, record.version)
        pipe.execute()

    def model(self, version: int) -> ModelRecord | None:
        data = self.redis.hgetall(f"{PREFIX}model:{version}")
        return ModelRecord.from_hash(data) if data else None

    def model_versions(self) -> list[int]:
        """The registered model versions, from their set; a store written before the set
        existed is indexed once by a SCAN (a keyspace walk, so never again after that)."""
        if not self.redis.exists(MODELS):
            found = [
                int(k.rsplit(b":", 1)[1])
                for k in self.redis.scan_iter(match=f"{PREFIX}model:*", count=1000)
            ]
            if found:
                self.redis.sadd(MODELS, *found)
        return sorted(int(v) for v in self.redis.smembers(MODELS))

    def served_version(self) -> int | None:
        value = self.redis.get(f"{PREFIX}served")
        return int(value) if value is not None else None

    def serve(self, version: int) -> None:
        """Atomically point the services at a generation and announce it on the pub/sub channel."""
        if self.model(version) is None:
            raise KeyError(f"model version {version} is not registered")
        if self.item_count(version) == 0:
            raise ValueError(
                f"generation {version} holds no codes; encode a catalogue under it first"
            )
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(f"{PREFIX}served", version)
        pipe.publish(GENERATION_CHANNEL, str(version))
        pipe.execute()

    def remove_generation(self, version: int) -> int:
        """Delete every code of a generation (never the served one, nor the one the served
        preference model ranks over). Returns the keys removed."""
        if self.served_version() == version:
            raise ValueError(f"version {version} is being served; serve another one first")
        # atelier/personal_store.py's keys (it imports this module, so not its constants).
        preference = self.redis.get(f"{PREFIX}pref:served")
        if (
            preference is not None
            and self.redis.hget(f"{PREFIX}pref:{int(preference)}", "model_version")
            == str(version).encode()
        ):
            raise ValueError(
                f"generation {version} holds the codes the served preference model "
                f"{int(preference)} ranks; serve or train another preference model first"
            )
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(f"{PREFIX}model:{version}")
        pipe.srem(MODELS, version)
        removed = int(pipe.execute()[0])
        for batch in _chunks(
            self.redis.scan_iter(match=f"{PREFIX}gen:{version}:*", count=1000), 500
        ):
            removed += int(self.redis.delete(*batch))
        return removed

    # --- codes ---

    def upsert_codes(self, version: int, records: Sequence[ItemRecord]) -> int:
        """Write codes (new items, or new codes for held ones). Returns how many took a new slot."""
        pipe = self.redis.pipeline(transaction=True)
        self._queue_upserts(pipe, version, records)
        return sum(int(n) for n in pipe.execute())

    def _queue_upserts(self, pipe, version: int, records: Sequence[ItemRecord]) -> None:
        if not records:
            return
        # One record per id, the last: two of the same id in one script would take two slots.
        records = list({record.item_id: record for record in records}.values())
        layout = self._layout(version, create=True)
        epsilon = None if layout.stores_z else self._epsilon(version)
        for batch in _chunks(records, UPSERT_BATCH):
            planes = [np.stack([getattr(r, name) for r in batch]) for name in PLANES]
            stored = _stored_planes(layout, *planes, epsilon)
            args: list[str | bytes] = []
            for row, record in enumerate(batch):
                args += [
                    _checked_id(record.item_id),
                    pack_metadata(record.metadata),
                    b"".join(plane[row].tobytes() for plane in stored),
                ]
            dim = planes[0].shape[1]
            self._upsert_codes(args=[*self._code_args(version, dim, layout), *args], client=pipe)

    def _code_args(self, version: int, dim: int, layout: Layout) -> list[str]:
        return [
            _generation_prefix(version),
            str(4 * dim),
            str(layout.block_items),
            f"{PREFIX}served",
            str(version),
            str(CHANGES_CAP),
            str(layout.planes),
        ]

    def _layout(self, version: int, create: bool = False) -> Layout | None:
        """The generation's block layout (None for one never written, unless `create`). Read
        on every call, never cached: a removed generation's version may be written again."""
        prefix = _generation_prefix(version)
        value = self._choose_layout(
            keys=[prefix + "layout", prefix + "next"],
            args=[LAYOUT.encode(), FIRST_BLOCK_LAYOUT.encode(), "1" if create else "0"],
        )
        return None if value is None else Layout.decode(value)

    def _epsilon(self, version: int) -> np.ndarray:
        model = self.model(version)
        if model is None:
            raise KeyError(f"model version {version} is not registered (its ε derives z)")
        return model.epsilon

    def delete_codes(self, version: int, item_ids: Sequence[str]) -> int:
        """Delete items from a generation (the served one's replicas drop them live). Returns the
        number that were held."""
        deleted = 0
        for batch in _chunks(item_ids, UPSERT_BATCH):
            deleted += int(
                self._delete_codes(
                    args=[
                        _generation_prefix(version),
                        f"{PREFIX}served",
                        str(version),
                        str(CHANGES_CAP),
                        *batch,
                    ]
                )
            )
        return deleted

    def item(self, version: int, item_id: str) -> ItemRecord | None:
        prefix = _generation_prefix(version)
        # Two round trips: where the item lives (and the layout and ε that read it), then its row.
        pipe = self.redis.pipeline(transaction=False)
        self._choose_layout(
            keys=[prefix + "layout", prefix + "next"],
            args=[LAYOUT.encode(), FIRST_BLOCK_LAYOUT.encode(), "0"],
            client=pipe,
        )
        pipe.hget(prefix + "slots", item_id)
        pipe.get(prefix + "vector_bytes")
        pipe.hget(f"{PREFIX}model:{version}", "epsilon")
        layout_value, held, vector_bytes, packed_epsilon = pipe.execute()
        if layout_value is None or held is None or vector_bytes is None:
            return None
        layout = Layout.decode(layout_value)
        if packed_epsilon is None and not layout.stores_z:
            return None  # the generation is being removed
        epsilon = None if layout.stores_z else unpack(packed_epsilon)
        slot, width = int(held.split(SEP, 1)[0]), int(vector_bytes)
        block, within = divmod(slot, layout.block_items)
        pipe = self.redis.pipeline(transaction=False)
        for plane in range(layout.planes):
            offset = (plane * layout.block_items + within) * width
            pipe.getrange(f"{prefix}block:{block}", offset, offset + width - 1)
        self._line_of(keys=[f"{prefix}meta:{block}"], args=[within], client=pipe)
        *planes, meta = pipe.execute()
        row = np.frombuffer(b"".join(planes), "<f4")[None]
        mu, sigma, z = np.split(_with_z(row, layout, epsilon)[0].astype(np.float32), ROW_VECTORS)
        return ItemRecord(item_id, mu, sigma, z, unpack_metadata(meta or b""))

    def items_held(self, version: int, item_ids: Sequence[str]) -> list[bool]:
        """Whether each id is an item of the generation (one round trip)."""
        if not item_ids:
            return []
        held = self.redis.hmget(_generation_prefix(version) + "slots", list(item_ids))
        return [value is not None for value in held]

    def item_count(self, version: int) -> int:
        return int(self.redis.hlen(_generation_prefix(version) + "slots"))

    def item_ids(self, version: int) -> list[str]:
        return sorted(v.decode() for v in self.redis.hkeys(_generation_prefix(version) + "slots"))

    def change_position(self, version: int) -> int:
        """The sequence number of the generation's last change (0 before the first)."""
        return int(self.redis.get(_generation_prefix(version) + "seq") or 0)

    def changes_after(
        self, version: int, sequence: int, stream_id: str, count: int = 10_000, block_ms: int = 0
    ) -> ChangeBatch:
        """Changes after (sequence, stream_id): the next ones in order, or `gap` when some were
        trimmed away (the reader must then reload the generation)."""
        key = _generation_prefix(version) + "changes"
        if block_ms:
            found = self.redis.xread({key: stream_id}, count=count, block=block_ms)
            entries = found[0][1] if found else []
        else:
            entries = self.redis.xrange(key, min=f"({stream_id}", count=count)
        changes = []
        expected = sequence + 1
        layout = self._layout(version) if entries else None
        epsilon = None if layout is None or layout.stores_z else self._epsilon(version)
        for entry_id, fields in entries:
            seq = int(fields[b"seq"])
            if seq < expected:
                continue
            if seq != expected:
                return ChangeBatch([], sequence, stream_id, gap=True)
            expected += 1
            changes.append(
                Change(
                    seq,
                    fields[b"op"].decode(),
                    fields[b"id"].decode(),
                    unpack_metadata(fields[b"meta"]) if b"meta" in fields else {},
                    _full_row(fields.get(b"row", b""), layout, epsilon),
                )
            )
            stream_id = entry_id.decode()
        if not entries and sequence < self.change_position(version):
            if block_ms:  # a change may have landed since the blocking read gave up: look again
                return self.changes_after(version, sequence, stream_id, count)
            # Nothing after our entry, yet the counter moved past us: trimmed (or a new stream).
            return ChangeBatch([], sequence, stream_id, gap=True)
        return ChangeBatch(changes, expected - 1, stream_id, gap=False)

    def load_codes(
        self,
        version: int,
        keep: Callable[[str], bool] | None = None,
        blocks_per_call: int = 8,
        vectors: Sequence[str] = PLANES,
    ) -> CodeMatrix:
        """Every live code of a generation (those whose id passes `keep`), in slot order, and the
        change position they include: changes after it are to be applied on top. Only the named
        `vectors` are read (each is 256 bytes an item at 64 dimensions); the others come back
        as empty (0, d) arrays."""
        self.migrate_generation(version)  # no-op unless written in the first layout
        prefix = _generation_prefix(version)
        layout = self._layout(version) or LAYOUT
        pipe = self.redis.pipeline(transaction=True)
        for name in ("next", "live", "seq", "vector_bytes"):
            pipe.get(prefix + name)
        pipe.xrevrange(prefix + "changes", count=1)
        next_slot, live_bits, seq, vector_bytes, last = pipe.execute()
        slots = int(next_slot or 0)
        model = self.model(version)
        dim = int(vector_bytes) // 4 if vector_bytes else (model.latent_dim if model else 0)
        live = np.zeros(slots, bool)
        bits = np.unpackbits(np.frombuffer(live_bits or b"", np.uint8))[:slots].astype(bool)
        live[: len(bits)] = bits
        ids: list[str] = []
        metas: list[bytes] = []
        # Filled plane by plane: one copy of the codes, never a list of blocks concatenated.
        wanted = [PLANES.index(name) for name in vectors]
        derive_z = PLANES.index("z") in wanted and not layout.stores_z
        epsilon = self._epsilon(version) if derive_z and slots else None
        # The stored planes to read: those wanted, and μ and σ where z is derived from them.
        read = sorted({p for p in wanted if p < layout.planes} | ({0, 1} if derive_z else set()))
        planes = {plane: np.empty((slots, dim), np.float32) for plane in wanted}
        per = layout.block_items
        width = per * dim * 4
        filled = 0
        blocks = -(-slots // per)
        for first in range(0, blocks, blocks_per_call):
            pipe = self.redis.pipeline(transaction=False)
            span = range(first, min(blocks, first + blocks_per_call))
            for block in span:
                for plane in read:
                    pipe.getrange(prefix + f"block:{block}", plane * width, (plane + 1) * width - 1)
                pipe.get(prefix + f"ids:{block}")
                pipe.get(prefix + f"meta:{block}")
            replies = pipe.execute()
            step = len(read) + 2
            for offset, block in enumerate(span):
                *data, id_text, meta_text = replies[step * offset : step * (offset + 1)]
                base = block * per
                count = min(per, slots - base)
                block_ids = (id_text or b"").decode().split("\n")[:count]
                block_metas = (meta_text or b"").split(b"\n")[:count]
                chosen = live[base : base + count].copy()
                if keep is not None:
                    chosen &= np.fromiter(map(keep, block_ids), bool, count)
                picked = None if chosen.all() else np.flatnonzero(chosen)
                taken = count if picked is None else len(picked)
                stored = {
                    plane: np.frombuffer(raw or b"", "<f4")[: count * dim].reshape(count, dim)
                    for plane, raw in zip(read, data, strict=True)
                }
                if derive_z:
                    stored[2] = fixed_eps_code(stored[0], stored[1], epsilon)
                for plane, out in planes.items():
                    out[filled : filled + taken] = (
                        stored[plane] if picked is None else stored[plane][picked]
                    )
                if picked is None:
                    ids += block_ids
                    metas += block_metas
                else:
                    ids += [block_ids[i] for i in picked.tolist()]
                    metas += [block_metas[i] for i in picked.tolist()]
                filled += taken
        # A few dead slots stay in the arrays' spare room; a shard's fraction is copied out.
        mu, sigma, z = (
            np.zeros((0, dim), np.float32)
            if plane not in planes
            else planes[plane][:filled]
            if filled >= 0.9 * slots
            else planes[plane][:filled].copy()
            for plane in range(ROW_VECTORS)
        )
        del planes
        return CodeMatrix(
            version=version,
            item_ids=ids,
            mu=mu,
            sigma=sigma,
            z=z,
            metadata=Metadata(metas),
            position=(int(seq or 0), last[0][0].decode() if last else "0-0"),
        )

    def write_generation(
        self,
        version: int,
        item_ids: Sequence[str],
        mu: np.ndarray,
        sigma: np.ndarray,
        z: np.ndarray,
        metadata: Sequence[dict[str, str]] | None = None,
        batch: int | None = None,
    ) -> None:
        """Bulk-write codes (a new catalogue, a migration, a benchmark): one round trip per
        batch, a block's worth by default. Items held already are upserted instead, so a re-run
        after a crash is safe."""
        dim = mu.shape[1]
        empty = pack_metadata({})
        layout = self._layout(version, create=True)
        epsilon = None if layout.stores_z else self._epsilon(version)
        batch = batch or layout.block_items
        # Batches aligned to blocks append each block's lists in one piece (Redis's greedy
        # growth of a string appended to piecemeal wastes up to half of it).
        held = int(self.redis.get(_generation_prefix(version) + "next") or 0)
        bounds = [0, *range(-held % layout.block_items or batch, len(item_ids), batch)]
        bounds = sorted({*(b for b in bounds if b < len(item_ids)), len(item_ids)})

        def send(start: int, end: int, ids: list[str], args: list) -> None:
            if int(self._append_codes(args=args)) < 0:
                records = [
                    ItemRecord(
                        ids[i],
                        mu[start + i],
                        sigma[start + i],
                        z[start + i],
                        metadata[start + i] if metadata else {},
                    )
                    for i in range(len(ids))
                ]
                self.upsert_codes(version, records)

        # Packing the next batch overlaps Redis writing this one (two CPUs instead of one).
        with ThreadPoolExecutor(1, thread_name_prefix="code-writer") as sender:
            pending = None
            for start, end in itertools.pairwise(bounds):
                ids = _checked_ids(item_ids[start:end])
                if len(set(ids)) != len(ids):
                    raise ValueError("a bulk write names an item id twice")
                metas = (
                    [pack_metadata(m) for m in metadata[start:end]]
                    if metadata
                    else [empty] * len(ids)
                )
                planes = _stored_planes(
                    layout, mu[start:end], sigma[start:end], z[start:end], epsilon
                )
                args = [
                    _generation_prefix(version),
                    str(4 * dim),
                    str(layout.block_items),
                    str(len(ids)),
                    "\n".join(ids),
                    "\n".join(metas),
                    str(layout.planes),
                    "".join(map(fingerprint, metas)),
                    *(plane.tobytes() for plane in planes),
                ]
                if pending is not None:
                    pending.result()
                pending = sender.submit(send, start, end, ids, args)
            if pending is not None:
                pending.result()

    def random_item_id(self, version: int) -> str | None:
        value = self.redis.hrandfield(_generation_prefix(version) + "slots")
        return value.decode() if value else None

    def migrate_generation(self, version: int, batch: int = 2000) -> int:
        """Move a generation written in the first layout (a set of ids and one hash per item)
        into blocks, then delete the old keys. Safe to re-run after a crash: the upsert is
        idempotent, and old keys are deleted only after their codes are in blocks."""
        old_ids = f"{PREFIX}gen:{version}:items"
        if self.redis.type(old_ids) != b"set":
            return 0
        moved = 0
        for chunk in _chunks(sorted(v.decode() for v in self.redis.smembers(old_ids)), batch):
            pipe = self.redis.pipeline(transaction=False)
            for item_id in chunk:
                pipe.hgetall(f"{PREFIX}gen:{version}:item:{item_id}")
            records = [
                _record(item_id, data)
                for item_id, data in zip(chunk, pipe.execute(), strict=True)
                if data and not _FORBIDDEN.search(item_id)
            ]
            # Ids no block can hold (control characters) stay in the first layout, logged.
            skipped = [i for i in chunk if _FORBIDDEN.search(i)]
            if skipped:
                log.warning("generation %d: %d ids left unmigrated", version, len(skipped))
            chunk = [item_id for item_id in chunk if not _FORBIDDEN.search(item_id)]
            if not chunk:
                continue
            if records:
                self.upsert_codes(version, records)
            pipe = self.redis.pipeline(transaction=False)
            for item_id in chunk:
                pipe.delete(f"{PREFIX}gen:{version}:item:{item_id}")
            pipe.srem(old_ids, *chunk)
            pipe.execute()
            moved += len(records)
        return moved

    def migrate(self) -> dict[int, int]:
        """Migrate every registered generation still in the first layout."""
        return {v: n for v in self.model_versions() if (n := self.migrate_generation(v))}

    def partition_centres(self, version: int, space: str, k: int) -> np.ndarray | None:
        raw = self.redis.hget(f"{PREFIX}gen:{version}:index", f"kmeans:{space}:{k}")
        return unpack(raw).reshape(k, -1).copy() if raw else None

    def save_partition_centres(self, version: int, space: str, centres: np.ndarray) -> np.ndarray:
        """Store k-means centres once per generation; the first writer wins, so replicas agree."""
        k = len(centres)
        self.redis.hsetnx(f"{PREFIX}gen:{version}:index", f"kmeans:{space}:{k}", pack(centres))
        stored = self.partition_centres(version, space, k)
        assert stored is not None
        return stored

    def derived_state(self, version: int, name: str) -> bytes | None:
        """A piece of state derived from a generation (see `save_derived_state`)."""
        return self.redis.hget(f"{PREFIX}gen:{version}:index", name)

    def save_derived_state(
        self, version: int, name: str, value: bytes | str, replace: bool = False
    ) -> bytes:
        """Keep derived state once per generation; the first writer wins, so replicas agree
        (`replace`: state a later build refreshed, such as IVF lists retrained after the
        catalogue grew)."""
        if replace:
            self.redis.hset(f"{PREFIX}gen:{version}:index", name, value)
        else:
            self.redis.hsetnx(f"{PREFIX}gen:{version}:index", name, value)
        stored = self.derived_state(version, name)
        assert stored is not None
        return stored

    # --- jobs ---

    def _job_keys(self, job_id: str) -> list[str]:
        key = job_key(job_id)
        return [key, *(f"{key}:{part}" for part in JOB_PARTS)]

    def _entry_key(self, job_id: str, item_id: str) -> str:
        return f"{job_key(job_id)}:entry:{item_id}"

    def create_job(
        self,
        version: int,
        entries: Sequence[dict[str, bytes | str]],
        chunk_size: int,
        ttl_seconds: int,
        image_size: tuple[int, int],
    ) -> str:
        """Store a job's entries (item_id, image_ref or image, metadata) and its definition.

        Every key expires after ttl_seconds (refreshed by activity). The definition is written
        last, in one transaction with the job's place among the active jobs: a job whose creator
        died half-way has no definition, and its entries simply expire.
        """
        job_id = uuid.uuid4().hex
        key = job_key(job_id)
        for chunk in _chunks(entries, 1000):
            pipe = self.redis.pipeline(transaction=False)
            for entry in chunk:
                entry_key = self._entry_key(job_id, str(entry["item_id"]))
                pipe.hset(entry_key, mapping=entry)
                pipe.expire(entry_key, ttl_seconds)
            pipe.rpush(f"{key}:pending", *[str(e["item_id"]) for e in chunk])
            pipe.expire(f"{key}:pending", ttl_seconds)
            pipe.execute()
        total = len(entries)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            key,
            mapping={
                "model_version": str(version),
                "total": str(total),
                "chunk_size": str(chunk_size),
                "chunks": str(-(-total // chunk_size)),
                "queued": "0",
                "created": repr(time.time()),
                "cancelled": "0",
                "ttl": str(ttl_seconds),
                "image_height": str(image_size[0]),
                "image_width": str(image_size[1]),
            },
        )
        pipe.expire(key, ttl_seconds)
        pipe.sadd(ACTIVE_JOBS, job_id)
        pipe.execute()
        return job_id

    def job_exists(self, job_id: str) -> bool:
        return valid_job_id(job_id) and bool(self.redis.exists(job_key(job_id)))

    def job_entries(self, job_id: str, item_ids: Sequence[str]) -> list[dict[bytes, bytes]]:
        pipe = self.redis.pipeline(transaction=False)
        for item_id in item_ids:
            pipe.hgetall(self._entry_key(job_id, item_id))
        return pipe.execute()

    def job_definition(self, job_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(job_key(job_id)).items()}

    def chunk_item_ids(self, job_id: str, index: int, size: int) -> list[str]:
        """The item ids of chunk `index`: a slice of the job's pending list."""
        raw = self.redis.lrange(f"{job_key(job_id)}:pending", index * size, (index + 1) * size - 1)
        return [v.decode() for v in raw]

    def recorded_ids(self, job_id: str, item_ids: Sequence[str]) -> set[str]:
        """Those of item_ids already recorded as done or failed."""
        if not item_ids:
            return set()
        key = job_key(job_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.smismember(f"{key}:done", list(item_ids))
        pipe.hmget(f"{key}:failed", list(item_ids))
        done, failed = pipe.execute()
        return {
            item_id
            for item_id, is_done, reason in zip(item_ids, done, failed, strict=True)
            if is_done or reason is not None
        }

    def job_done_ids(self, job_id: str, item_ids: Sequence[str]) -> set[str]:
        """Those of item_ids recorded as done (encoded)."""
        if not item_ids:
            return set()
        flags = self.redis.smismember(f"{job_key(job_id)}:done", list(item_ids))
        return {item_id for item_id, flag in zip(item_ids, flags, strict=True) if flag}

    def begin_chunk(self, job_id: str, index: int, attempt: int) -> int:
        """Count one delivery of (chunk, attempt); 0 when the job is unknown or expired."""
        return int(
            self._begin_chunk(
                keys=[job_key(job_id), f"{job_key(job_id)}:deliveries"],
                args=[f"{index}:{attempt}", repr(time.time())],
            )
        )

    def record_chunk(
        self,
        job_id: str,
        version: int,
        records: Sequence[ItemRecord],
        failures: dict[str, str],
        chunk_index: int | None = None,
    ) -> bool:
        """Codes, outcomes and inline-bytes deletion of one chunk in one atomic step.

        An item is counted once, as done or failed: a success after a failure replaces it, a
        failure after a success is ignored, and the first failure's reason is kept. Inline image
        bytes of every item recorded are deleted in the same step. With chunk_index, the chunk is
        marked finished. Returns False when the job is unknown or expired (its codes are still
        written: they belong to the generation, not to the job).
        """
        done_ids = [r.item_id for r in records]
        entry_keys = [self._entry_key(job_id, i) for i in (*done_ids, *failures)]
        args: list[str] = [
            repr(time.time()),
            "" if chunk_index is None else str(chunk_index),
            str(len(done_ids)),
            *done_ids,
        ]
        for item_id, reason in failures.items():
            args += [item_id, reason]
        pipe = self.redis.pipeline(transaction=True)
        self._queue_upserts(pipe, version, records)
        self._record_chunk(keys=[*self._job_keys(job_id), *entry_keys], args=args, client=pipe)
        return int(pipe.execute()[-1]) >= 0

    def queue_state(self, job_id: str) -> QueueState | None:
        key = job_key(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hmget(key, "queued", "chunks", "chunk_size", "cancelled")
        pipe.scard(f"{key}:chunks")
        (queued, chunks, chunk_size, cancelled), finished = pipe.execute()
        if queued is None or chunks is None:
            return None
        return QueueState(
            int(queued), int(chunks), int(chunk_size), int(finished), cancelled == b"1"
        )

    def touch_chunk(self, job_id: str, index: int, size: int) -> None:
        """Refresh the TTL of a chunk's entries and of the job's keys (the chunk is being queued)."""
        ttl = self.redis.hget(job_key(job_id), "ttl")
        if ttl is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        for item_id in self.chunk_item_ids(job_id, index, size):
            pipe.expire(self._entry_key(job_id, item_id), int(ttl))
        for key in self._job_keys(job_id):
            pipe.expire(key, int(ttl))
        pipe.execute()

    def advance_queued(self, job_id: str, queued: int) -> int:
        """Raise the job's queued high-water mark to `queued` (never lower it); -1: no such job."""
        return int(self._advance_queued(keys=[job_key(job_id)], args=[str(queued)]))

    def set_job_fields(self, job_id: str, **fields: str) -> bool:
        """Set fields of an existing job's definition (never creates one)."""
        flat = [v for pair in fields.items() for v in pair]
        return bool(self._set_if_exists(keys=[job_key(job_id)], args=flat))

    def pump_lock(self, job_id: str, timeout: float):
        """The lock that lets one pump at a time queue a job's chunks (released or expired)."""
        return self.redis.lock(f"{job_key(job_id)}:pump", timeout=timeout)

    def active_jobs(self) -> list[str]:
        """Jobs that may still have chunks to queue or to finish."""
        return sorted(v.decode() for v in self.redis.smembers(ACTIVE_JOBS))

    def unfinished_chunks(self, job_id: str, below: int) -> list[int]:
        """The chunks under index `below` (the queued ones) not yet marked finished."""
        finished = {int(v) for v in self.redis.smembers(f"{job_key(job_id)}:chunks")}
        return [index for index in range(below) if index not in finished]

    def forget_active(self, job_id: str) -> None:
        self.redis.srem(ACTIVE_JOBS, job_id)

    def cancel_job(self, job_id: str) -> bool:
        cancelled = self.set_job_fields(job_id, cancelled="1", updated=repr(time.time()))
        self.forget_active(job_id)
        return cancelled

    def job_cancelled(self, job_id: str) -> bool:
        return self.redis.hget(job_key(job_id), "cancelled") == b"1"

    def job_progress(self, job_id: str, max_failures: int = 0) -> dict | None:
        key = job_key(job_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(key)
        pipe.scard(f"{key}:done")
        pipe.hlen(f"{key}:failed")
        pipe.scard(f"{key}:chunks")
        definition, done, failed, finished_chunks = pipe.execute()
        if not definition:
            return None
        fields = {k.decode(): v.decode() for k, v in definition.items()}
        failures: dict[str, str] = {}
        if max_failures > 0:
            for item_id, reason in self.redis.hscan_iter(f"{key}:failed", count=max_failures):
                failures[item_id.decode()] = reason.decode()
                if len(failures) >= max_failures:
                    break
        return {
            "job_id": job_id,
            **fields,
            "done": int(done),
            "failed": int(failed),
            "finished_chunks": int(finished_chunks),
            "failures": failures,
        }


@dataclass(frozen=True)
class QueueState:
    """Where a job's enqueueing stands: chunks handed to the queue, chunks finished."""

    queued: int
    chunks: int
    chunk_size: int
    finished: int
    cancelled: bool

    @property
    def in_flight(self) -> int:
        return self.queued - self.finished


def _generation_prefix(version: int) -> str:
    return f"{PREFIX}gen:{int(version)}:"


def _block_key(version: int, block: int) -> str:
    return f"{_generation_prefix(version)}block:{block}"


def _checked_id(item_id: str) -> str:
    if not item_id or _FORBIDDEN.search(item_id):
        raise ValueError(f"item id {item_id[:40]!r} is empty or holds control characters")
    return item_id


def _checked_ids(item_ids: Sequence[str]) -> list[str]:
    ids = list(item_ids)
    joined = "".join(ids)
    if _FORBIDDEN.search(joined) or not all(ids):
        for item_id in ids:
            _checked_id(item_id)
    return ids


def fingerprint(packed_metadata: str) -> str:
    """What the slot map keeps of an item's metadata: 16 hex digits of its SHA-1 (the Lua
    library's `slot_value` computes the same)."""
    return hashlib.sha1(packed_metadata.encode()).hexdigest()[:16]


def pack_metadata(metadata: dict[str, str]) -> str:
    """The metadata fields in METADATA_FIELDS order; control characters (the separators) become
    spaces, so a stored line always splits back into the same fields."""
    try:  # the common case, at C speed (a bulk write packs millions)
        packed = FIELD_SEP.join(map(metadata.get, METADATA_FIELDS, _NO_VALUES))
        if packed.count(FIELD_SEP) == len(METADATA_FIELDS) - 1 and not _FORBIDDEN_IN_FIELD.search(
            packed
        ):
            return packed
    except TypeError:  # a value that is None
        pass
    values = [metadata.get(k) or "" for k in METADATA_FIELDS]
    return FIELD_SEP.join(_FORBIDDEN.sub(" ", v) for v in values)


def unpack_metadata(packed: bytes | str) -> dict[str, str]:
    text = packed.decode() if isinstance(packed, bytes) else packed
    return dict(zip(METADATA_FIELDS, text.split(FIELD_SEP), strict=False))


def _stored_planes(
    layout: Layout,
    mu: np.ndarray,
    sigma: np.ndarray,
    z: np.ndarray,
    epsilon: np.ndarray | None,
) -> list[np.ndarray]:
    """The planes the layout stores, as contiguous little-endian float32. Where z is derived,
    the z given must be μ + σ⊙ε (what the encoder computes): a z from anywhere else would be
    silently replaced on the next read, so it is refused."""
    planes = [np.ascontiguousarray(np.atleast_2d(v), "<f4") for v in (mu, sigma, z)]
    if layout.stores_z:
        return planes
    derived = fixed_eps_code(planes[0], planes[1], epsilon)
    if not np.array_equal(derived, planes[2]) and not np.allclose(
        derived, planes[2], rtol=1e-5, atol=1e-5
    ):
        raise ValueError("z must be μ + σ⊙ε with the model version's ε")
    return planes[:STORED_PLANES]


def _with_z(stored: np.ndarray, layout: Layout, epsilon: np.ndarray | None) -> np.ndarray:
    """Rows of the stored planes (n, planes·d) as (n, 3·d) μ, σ, z."""
    if layout.stores_z:
        return stored
    mu, sigma = np.split(stored, 2, axis=1)
    return np.hstack([mu, sigma, fixed_eps_code(mu, sigma, epsilon)])


def _full_row(stored: bytes, layout: Layout | None, epsilon: np.ndarray | None) -> bytes:
    """A change's row of stored planes as μ, σ and z (pack_row's layout)."""
    if not stored or layout is None or layout.stores_z:
        return stored
    return _with_z(np.frombuffer(stored, "<f4")[None], layout, epsilon).astype("<f4").tobytes()


def pack_row(mu: np.ndarray, sigma: np.ndarray, z: np.ndarray) -> bytes:
    """One item's μ, σ and z as little-endian float32, in that order (a change's row)."""
    return b"".join(np.ascontiguousarray(v, "<f4").tobytes() for v in (mu, sigma, z))


def unpack_row(raw: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mu, sigma, z = np.frombuffer(raw, "<f4").astype(np.float32).reshape(ROW_VECTORS, -1)
    return mu, sigma, z


class Metadata(Sequence):
    """Per-row catalogue metadata, kept packed (one bytes object per row) and unpacked on access:
    a dict per row would cost several times the codes at millions of items."""

    def __init__(self, packed: list[bytes]):
        self._packed = packed

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, row):  # type: ignore[override]
        if isinstance(row, slice):
            return [unpack_metadata(p) for p in self._packed[row]]
        return unpack_metadata(self._packed[row])

    def columns(self, *names: str) -> dict[str, np.ndarray]:
        """Whole columns, e.g. the attributes a search filters on, at C speed: every packed row
        has exactly one field per METADATA_FIELDS, so a chunk's rows joined and split again are
        its fields in row-major order."""
        width = len(METADATA_FIELDS)
        positions = [METADATA_FIELDS.index(name) for name in names]
        # Arrays per chunk, joined at the end: a Python string per row and column would hold
        # gigabytes at ten million items.
        parts: list[list[np.ndarray]] = [[] for _ in names]
        separator = FIELD_SEP.encode()
        for start in range(0, len(self._packed), 100_000):
            chunk = self._packed[start : start + 100_000]
            fields = separator.join(chunk).decode().split(FIELD_SEP)
            if len(fields) != width * len(chunk):  # a row of another shape: the slow way
                rows = [unpack_metadata(packed) for packed in chunk]
                fields = [row.get(name, "") for row in rows for name in METADATA_FIELDS]
            for out, position in zip(parts, positions, strict=True):
                out.append(np.array(fields[position::width], dtype=str))
            del fields
        return {
            name: np.concatenate(column) if column else np.array([], dtype=str)
            for name, column in zip(names, parts, strict=True)
        }

    def appended(self, packed: list[bytes]) -> Metadata:
        return Metadata(self._packed + packed)


@dataclass(frozen=True)
class Change:
    """One change to a served generation: an upsert (with its metadata and packed row) or a delete."""

    sequence: int
    op: str  # "u" or "d"
    item_id: str
    metadata: dict[str, str]
    row: bytes


@dataclass(frozen=True)
class ChangeBatch:
    changes: list[Change]
    sequence: int  # the last change's sequence number
    stream_id: str  # and its stream entry, to read on from
    gap: bool  # changes were trimmed away: reload the generation


def _record(item_id: str, data: dict[bytes, bytes]) -> ItemRecord:
    metadata = {k: data.get(k.encode(), b"").decode() for k in METADATA_FIELDS}
    if not metadata["sub_category"] and b"category" in data:
        # Written by the first version, whose only category field held the subCategory.
        metadata["sub_category"] = data[b"category"].decode()
    return ItemRecord(
        item_id=item_id,
        mu=unpack(data[b"mu"]),
        sigma=unpack(data[b"sigma"]),
        z=unpack(data[b"z"]),
        metadata=metadata,
    )


def _chunks(values: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for value in values:
        chunk.append(value)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
