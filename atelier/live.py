"""Live updates: a served generation plus the changes written to it since it was loaded.

A replica loads a generation whole (the base) and then follows its change stream
(atelier.store). Rebuilding millions of items per change is out of the question, so changes
go into a small delta segment instead, the way log-structured stores keep recent writes:

- an upserted item lives in the delta, indexed flat under the base's partitions (the same names
  and centres, so eq. 3 and partition scopes mean the same thing in both);
- its base row, if any, and the base rows of deleted items are dead: every base search
  excludes them inside FAISS, so a deleted or replaced item never comes back;
- a query searches both segments and merges their top k by score, ties by item id: the
  single-index order.

Each batch of changes makes a new immutable LiveGeneration (readers hold one reference per
request). When the delta outgrows `compaction_items`, the holder rebuilds the base from the
store, which already holds every change, and follows on from the new base's position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from atelier import find, recommend
from atelier import generation as generations
from atelier.find import Found, Query
from atelier.generation import Generation
from atelier.latent import RANKING_METHODS
from atelier.search import IndexOptions
from atelier.sharded_generation import SharedPartitions, frame_of, index_under
from atelier.sharding import merge_top_k
from atelier.store import Change, ChangeBatch, CodeMatrix, Metadata, pack_metadata, unpack_row

# Deltas past this many items (or past this share of the base) ask for a rebuild: the delta is
# searched exactly and rebuilt per batch, so its cost grows with it.
COMPACTION_ITEMS = 50_000
COMPACTION_SHARE = 0.05


@dataclass(frozen=True)
class Overlay:
    """The changes since the base was loaded: the latest upsert of each item, and deletions."""

    upserts: dict[str, Change] = field(default_factory=dict)
    deleted: frozenset[str] = frozenset()
    position: tuple[int, str] = (0, "0-0")

    def applied(self, batch: ChangeBatch) -> Overlay:
        upserts = dict(self.upserts)
        deleted = set(self.deleted)
        for change in batch.changes:
            if change.op == "u":
                upserts.pop(change.item_id, None)  # re-inserted: it moves to the end, as in store
                upserts[change.item_id] = change
                deleted.discard(change.item_id)
            else:
                upserts.pop(change.item_id, None)
                deleted.add(change.item_id)
        return Overlay(upserts, frozenset(deleted), (batch.sequence, batch.stream_id))


Hit = tuple[Generation, int, float]  # a result: the segment, its row there, the score


def delta_of(
    base: Generation,
    frame: SharedPartitions,
    changed: list[Change],
    methods: Sequence[str] = RANKING_METHODS,
) -> Generation:
    """The changed items as a small generation indexed flat (exact) under the base's partitions
    (an item of a category the base does not have goes to the partition nearest its code)."""
    vectors = [unpack_row(change.row) for change in changed]
    mu, sigma, z = (np.stack([v[n] for v in vectors]) for n in range(3))
    matrix = CodeMatrix(
        base.version,
        [change.item_id for change in changed],
        mu,
        sigma,
        z,
        Metadata([pack_metadata(change.metadata).encode() for change in changed]),
    )
    local = generations.assemble(base.version, matrix, base.predictor, searchable=False)
    return index_under(local, frame, IndexOptions(kind="flat"), methods)


@dataclass(frozen=True)
class LiveGeneration:
    """A base generation, the delta of items changed since, and the base rows they hide."""

    base: Generation
    frame: SharedPartitions  # the base's partitions, which the delta is indexed under
    overlay: Overlay
    delta: Generation | None
    dead_rows: np.ndarray  # sorted base rows never returned (deleted or replaced items)
    methods: tuple[str, ...] = RANKING_METHODS
    owns: Callable[[str], bool] | None = field(default=None, compare=False, repr=False)
    compaction_items: int = COMPACTION_ITEMS

    @classmethod
    def of(
        cls,
        base: Generation,
        position: tuple[int, str],
        methods: Sequence[str] = RANKING_METHODS,
        owns: Callable[[str], bool] | None = None,
        compaction_items: int = COMPACTION_ITEMS,
    ) -> LiveGeneration:
        """`owns`: on a shard, which items are its own (changes to others are not its to hold)."""
        return cls(
            base,
            frame_of(base),
            Overlay(position=position),
            None,
            np.zeros(0, np.int64),
            tuple(methods),
            owns,
            compaction_items,
        )

    @property
    def version(self) -> int:
        return self.base.version

    @property
    def position(self) -> tuple[int, str]:
        return self.overlay.position

    @property
    def item_count(self) -> int:
        """Live items: the base's, less those deleted or replaced, plus the delta's."""
        delta = len(self.delta.codes) if self.delta is not None else 0
        return len(self.base.codes) - len(self.dead_rows) + delta

    @property
    def segments(self) -> list[Generation]:
        return [self.base] if self.delta is None else [self.base, self.delta]

    @property
    def needs_compaction(self) -> bool:
        size = len(self.overlay.upserts) + len(self.overlay.deleted)
        return size > min(self.compaction_items, max(1000, COMPACTION_SHARE * len(self.base.codes)))

    def owned(self, batch: ChangeBatch) -> ChangeBatch:
        """The changes of `batch` this generation holds (on a shard: its own items')."""
        if self.owns is None:
            return batch
        kept = [c for c in batch.changes if self.owns(c.item_id)]
        return ChangeBatch(kept, batch.sequence, batch.stream_id, batch.gap)

    def owned_count(self, batch: ChangeBatch) -> int:
        return len(self.owned(batch).changes)

    def with_changes(self, batch: ChangeBatch) -> LiveGeneration:
        batch = self.owned(batch)
        overlay = self.overlay.applied(batch)
        rows = [self.base.row_of.get(i) for i in (*overlay.upserts, *overlay.deleted)]
        dead = np.array(sorted(r for r in rows if r is not None), np.int64)
        delta = (
            delta_of(self.base, self.frame, list(overlay.upserts.values()), self.methods)
            if overlay.upserts
            else None
        )
        return dataclasses.replace(self, overlay=overlay, delta=delta, dead_rows=dead)

    def locate(self, item_id: str) -> tuple[Generation, int] | None:
        """The segment and row that hold a live item; None for an unknown or deleted one."""
        if self.delta is not None and item_id in self.delta.row_of:
            return self.delta, self.delta.row_of[item_id]
        if item_id in self.overlay.deleted:
            return None
        row = self.base.row_of.get(item_id)
        return None if row is None else (self.base, row)

    def excluded(self, segment: Generation) -> np.ndarray | None:
        """The rows of a segment no search may return."""
        return self.dead_rows if segment is self.base and len(self.dead_rows) else None


def merged(lists: Sequence[Sequence[Hit]], k: int) -> list[Hit]:
    """The top k of segments' hits: score descending, ties by item id (the single-index order)."""
    entries = [
        [(seg.codes.item_ids[row], score, (seg, row)) for seg, row, score in h] for h in lists
    ]
    return [(seg, row, score) for _, score, (seg, row) in merge_top_k(entries, k)]


def _hits(segment: Generation, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
    return [
        (segment, row, score) for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
    ]


def search(
    live: LiveGeneration, method: str, queries: Sequence[Query], k: int, **options
) -> tuple[list[Hit], Found]:
    """find.search over every segment (queries[i] is the query as segment i knows it: its own
    row there, if any), merged; and the base's Found for the scope's names."""
    found = [
        find.search(segment, method, query, k, exclude_rows=live.excluded(segment), **options)
        for segment, query in zip(live.segments, queries, strict=True)
    ]
    hits = [
        _hits(segment, f.rows, f.scores) for segment, f in zip(live.segments, found, strict=True)
    ]
    return merged(hits, k), found[0]


@dataclass(frozen=True)
class LiveLook:
    partitioning: str
    home: str
    similar: list[Hit]
    pairings: dict[str, list[Hit]]  # in the targets' order
    matched_gender: str


def complete_the_look(
    live: LiveGeneration, method: str, queries: Sequence[Query], k: int, **options
) -> LiveLook:
    """recommend.complete_the_look over every segment, each list merged."""
    looks = [
        recommend.complete_the_look(
            segment, method, query, k, exclude_rows=live.excluded(segment), **options
        )
        for segment, query in zip(live.segments, queries, strict=True)
    ]
    names = list(dict.fromkeys(name for look in looks for name in look.pairings))
    wanted = {name: place for place, name in enumerate(options.get("targets") or names)}
    names.sort(key=lambda name: wanted.get(name, len(wanted)))
    pairings = {
        name: merged(
            [
                _hits(segment, *look.pairings[name])
                for segment, look in zip(live.segments, looks, strict=True)
                if name in look.pairings
            ],
            k,
        )
        for name in names
    }
    first = looks[0]
    return LiveLook(
        first.partitioning,
        first.home,
        merged([_hits(s, *look.similar) for s, look in zip(live.segments, looks, strict=True)], k),
        pairings,
        first.matched_gender,
    )
