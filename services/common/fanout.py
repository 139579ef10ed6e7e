"""Queries to a sharded service: the same request to every shard with one deadline, the shards'
top-k lists merged into the single node's answer.

A shard that does not answer (unavailable, past the deadline, overloaded) fails the call with
UNAVAILABLE (DEADLINE_EXCEEDED when the deadline passed) naming the shard: a client never gets
fewer items silently. A request with `allow_partial` set gets what the other shards found instead,
with `partial = true` and the shards left out in `missing_shards`. An error that is the caller's
own (INVALID_ARGUMENT, NOT_FOUND, ...) is the same on every shard and is passed on as it is.
Shards found serving different generations (a switch in progress) fail the call too, or with
`allow_partial` the shards on the newest generation answer and the others count as missing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc

from atelier.sharding import merge_top_k, shard_of
from atelier.v1 import (
    common_pb2,
    recommender_pb2,
    recommender_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)

log = logging.getLogger(__name__)
CALLER_FAULTS = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)


class ShardError(grpc.RpcError):
    """A fanned-out call that failed as a whole; reads like any RpcError (code, details)."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code = code
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()

    def __str__(self) -> str:
        return f"{self._code.name}: {self._details}"


@dataclass(frozen=True)
class Gathered:
    replies: dict[int, object]  # shard index -> reply
    missing: list[int]


def _check_shard(service: str, index: int, count: int, reply) -> None:
    served = reply.shard_count or 1
    allowed = [[index], []] if count == 1 else [[index]]  # an older server names no shard
    if served != count or list(reply.shards) not in allowed:
        raise ShardError(
            grpc.StatusCode.INTERNAL,
            f"{service} address {index + 1} of {count} serves shard {list(reply.shards)} of "
            f"{served}: list one address per shard, in shard order (SHARD_INDEX)",
        )


def gather(
    service: str,
    calls: Sequence[grpc.UnaryUnaryMultiCallable],
    request,
    timeout: float | None,
    metadata=None,
    allow_partial: bool = False,
) -> Gathered:
    """Call every shard in parallel with one deadline; the replies, or the policy's error."""
    count = len(calls)
    deadline = None if timeout is None else time.monotonic() + timeout
    futures = []
    for call in calls:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        futures.append(call.future(request, timeout=remaining, metadata=metadata))
    replies: dict[int, object] = {}
    failed: dict[int, str] = {}
    codes: dict[int, grpc.StatusCode] = {}
    for index, future in enumerate(futures):
        try:
            replies[index] = future.result()
        except grpc.RpcError as exc:
            if exc.code() in CALLER_FAULTS:
                for other in futures:
                    other.cancel()
                raise
            failed[index], codes[index] = f"{exc.code().name}: {exc.details()}", exc.code()
            log.warning(
                "%s shard %d of %d did not answer: %s", service, index, count, failed[index]
            )
    for index, reply in replies.items():
        _check_shard(service, index, count, reply)
    versions = sorted({reply.model_version for reply in replies.values()})
    if len(versions) > 1:
        if not allow_partial:
            raise ShardError(
                grpc.StatusCode.UNAVAILABLE,
                f"{service} shards serve different generations {versions} (a switch is in "
                "progress); try again",
            )
        for index in [i for i, r in replies.items() if r.model_version != versions[-1]]:
            del replies[index]
            failed[index] = f"still on generation {versions[0]}"
            codes[index] = grpc.StatusCode.UNAVAILABLE
    if failed and (not allow_partial or not replies):
        missing = sorted(failed)
        timed_out = all(codes[i] == grpc.StatusCode.DEADLINE_EXCEEDED for i in missing)
        raise ShardError(
            grpc.StatusCode.DEADLINE_EXCEEDED if timed_out else grpc.StatusCode.UNAVAILABLE,
            f"{service} shard{'s' if len(missing) > 1 else ''} "
            f"{', '.join(str(i) for i in missing)} of {count} did not answer "
            f"({'; '.join(failed[i].split(':')[0] for i in missing)})"
            + ("" if not replies else "; set allow_partial to accept the other shards' results"),
        )
    return Gathered(replies, sorted(failed))


def _first(gathered: Gathered, query: common_pb2.Query, count: int):
    """The reply whose query-level fields (category, cluster, ...) are passed on: the item's own
    shard's for a query by item, where it answered."""
    if query.WhichOneof("source") == "item_id":
        owner = shard_of(query.item_id, count)
        if owner in gathered.replies:
            return gathered.replies[owner]
    return gathered.replies[min(gathered.replies)]


def _merged(lists: Sequence[Sequence[common_pb2.ScoredItem]], k: int) -> list:
    entries = [[(s.item.item_id, s.score, s) for s in found] for found in lists]
    return [scored for _, _, scored in merge_top_k(entries, k)]


def _cover(merged, gathered: Gathered, count: int) -> None:
    merged.shard_count = count
    del merged.shards[:]
    merged.shards.extend(sorted(gathered.replies))
    merged.partial = bool(gathered.missing)
    del merged.missing_shards[:]
    merged.missing_shards.extend(gathered.missing)


def merge_search(
    request: retrieval_pb2.SearchRequest, gathered: Gathered, count: int
) -> retrieval_pb2.SearchResponse:
    merged = retrieval_pb2.SearchResponse()
    merged.CopyFrom(_first(gathered, request.query, count))
    del merged.results[:]
    merged.results.extend(_merged([r.results for r in gathered.replies.values()], request.k))
    _cover(merged, gathered, count)
    return merged


def merge_recommend(
    request: recommender_pb2.RecommendRequest, gathered: Gathered, count: int
) -> recommender_pb2.RecommendResponse:
    merged = recommender_pb2.RecommendResponse()
    merged.CopyFrom(_first(gathered, request.query, count))
    replies = list(gathered.replies.values())
    del merged.similar.items[:]
    merged.similar.items.extend(_merged([r.similar.items for r in replies], request.k))
    pairings: dict[str, tuple[int, list]] = {}
    for reply in replies:
        for found in reply.pairings:
            pairings.setdefault(found.partition, (found.rank, []))[1].append(found.items)
    del merged.pairings[:]
    for name, (rank, lists) in sorted(pairings.items(), key=lambda entry: entry[1][0]):
        merged.pairings.add(partition=name, rank=rank, items=_merged(lists, request.k))
    _cover(merged, gathered, count)
    return merged


class _Sharded:
    service = ""

    def __init__(self, stubs: Sequence, method: str, merge: Callable):
        if not stubs:
            raise ValueError(f"{self.service} needs at least one address")
        self._calls = [getattr(stub, method) for stub in stubs]
        self._merge = merge

    @property
    def shard_count(self) -> int:
        return len(self._calls)

    def _call(self, request, timeout: float | None = None, metadata=None):
        if len(self._calls) == 1:  # one node holds every item: its answer, its errors, as they are
            reply = self._calls[0](request, timeout=timeout, metadata=metadata)
            _check_shard(self.service, 0, 1, reply)
            return reply
        gathered = gather(
            self.service, self._calls, request, timeout, metadata, request.allow_partial
        )
        return self._merge(request, gathered, len(self._calls))


class ShardedRetrieval(_Sharded):
    """RetrievalService over its shards (one stub per shard, in shard order), called like the
    generated stub: `Search(request, timeout=...)`."""

    service = "retrieval"

    def __init__(self, stubs: Sequence[retrieval_pb2_grpc.RetrievalServiceStub]):
        super().__init__(stubs, "Search", merge_search)

    def Search(
        self, request: retrieval_pb2.SearchRequest, timeout: float | None = None, metadata=None
    ) -> retrieval_pb2.SearchResponse:
        return self._call(request, timeout, metadata)


class ShardedRecommender(_Sharded):
    """RecommenderService over its shards (one stub per shard, in shard order), called like the
    generated stub: `Recommend(request, timeout=...)`."""

    service = "recommender"

    def __init__(self, stubs: Sequence[recommender_pb2_grpc.RecommenderServiceStub]):
        super().__init__(stubs, "Recommend", merge_recommend)

    def Recommend(
        self,
        request: recommender_pb2.RecommendRequest,
        timeout: float | None = None,
        metadata=None,
    ) -> recommender_pb2.RecommendResponse:
        return self._call(request, timeout, metadata)


def shard_addresses(value: str | Sequence[str]) -> tuple[str, ...]:
    """One address per shard, in shard order: a sequence, or one comma-separated string."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    addresses = tuple(part.strip() for part in parts if part.strip())
    if not addresses:
        raise ValueError(f"no address in {value!r}")
    return addresses
