"""Sharded serving: which shard holds an item, and merging shards' top-k lists into one.

A generation's items are split over N shards by a stable hash of the item id (shard_of); each
shard indexes only its own items under the whole generation's partitions
(atelier.sharded_generation), so its top k in any partition is the single node's top k restricted
to the shard's items, and merging the shards' lists by score, ties by item id (merge_top_k), gives
the single node's list. Pure: clients import it without the indexing libraries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

Payload = TypeVar("Payload")


def shard_of(item_id: str, count: int) -> int:
    """The shard that holds an item: stable across processes and Python versions (never hash())."""
    if count < 1:
        raise ValueError(f"shard count must be at least 1, got {count}")
    digest = hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the items whose id hashes to it."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be in 0..{self.count - 1} with count >= 1")

    def owns(self, item_id: str) -> bool:
        return shard_of(item_id, self.count) == self.index

    def __str__(self) -> str:
        return f"shard {self.index} of {self.count}"


def merge_top_k(
    lists: Iterable[Sequence[tuple[str, float, Payload]]], k: int
) -> list[tuple[str, float, Payload]]:
    """The top k of shards' (item_id, score, payload) lists: score descending, ties by item id
    ascending, the single-node index's order."""
    merged = [entry for found in lists for entry in found]
    merged.sort(key=lambda entry: (-entry[1], entry[0]))
    return merged[:k]
