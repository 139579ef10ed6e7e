"""What the query services share: settings, the servicer base, Query -> vector, rows -> ScoredItems, serving."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated
from urllib.parse import quote

import faiss
import grpc
import numpy as np
from pydantic import (
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import NoDecode

from atelier import generation as generations
from atelier import sharded_generation
from atelier.find import PartitionUnavailable, Query
from atelier.generation import KMEANS, CategoryOf, Generation
from atelier.latent import NON_FINITE_CODE, RANKING_METHODS, finite_rows, validate_vector
from atelier.live import Hit, LiveGeneration
from atelier.search import IndexOptions, query_space
from atelier.sharded_generation import SharedPartitions
from atelier.sharding import Shard
from atelier.store import CodeStore, ItemRecord
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from services.common import metrics
from services.common.client import METHODS as CLIENT_METHODS
from services.common.generation_holder import GenerationHolder
from services.common.runtime import RunningServer, grpc_server
from services.common.settings import Port, ServiceSettings

# RankingMethod -> method name; an unset method is fixed-ε, the paper's served default.
METHODS = {
    common_pb2.RANKING_METHOD_UNSPECIFIED: "fixed_eps",
    **{value: name for name, value in CLIENT_METHODS.items()},
}
MAX_IMAGE_BYTES = 16 * 1024 * 1024


class QueryError(Exception):
    """A failure with its own status (for example the encoder's, passed on)."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@contextmanager
def statuses(context) -> Iterator[None]:
    """Domain errors to gRPC statuses, the same way in every query servicer."""
    try:
        yield
    except QueryError as exc:
        context.abort(exc.code, exc.message)
    except PartitionUnavailable as exc:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except LookupError as exc:
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0] if exc.args else exc))
    except ValueError as exc:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


def method_name(value: int) -> str:
    if value not in METHODS:
        raise ValueError(f"unknown ranking method {value}")
    return METHODS[value]


def check_k(k: int) -> int:
    if not 1 <= k <= 1000:
        raise ValueError(f"k must be between 1 and 1000, got {k}")
    return k


def resolve(
    query: common_pb2.Query,
    generation: Generation,
    method: str,
    encoder: encoder_pb2_grpc.EncoderServiceStub | None,
    remaining: float | None,
    max_abs: float,
    fetch: Callable[[int, str], ItemRecord | None] | None = None,
) -> Query:
    """The query's vector in the method's space, its own row when it is a catalogue item, and
    its category: the item's, or predicted from the code. On a shard, `fetch` reads an item that
    another shard holds from the store, so every shard answers a query by any catalogue item."""
    space = query_space(method)
    source = query.WhichOneof("source")
    if source == "vector":
        vector = validate_vector(query.vector.values, generation.latent_dim, max_abs)
        return Query(vector, None, generation.predict_category(vector), "")
    if source == "item_id":
        row = generation.row_of.get(query.item_id)
        record = fetch(generation.version, query.item_id) if row is None and fetch else None
        if record is not None:
            return sharded_generation.foreign_query(generation, record, method)
        if row is None:
            raise LookupError(f"unknown item {query.item_id!r} in generation {generation.version}")
        return Query(
            generation.codes.space(space)[row].astype(np.float64),
            row,
            generation.category_of_row(row),
            str(generation.attributes["gender"][row]),
        )
    if source == "image":
        if not query.image:
            raise ValueError("image is empty")
        if len(query.image) > MAX_IMAGE_BYTES:
            raise ValueError(f"image is larger than {MAX_IMAGE_BYTES} bytes")
        if encoder is None:
            raise QueryError(
                grpc.StatusCode.FAILED_PRECONDITION, "query by image needs ENCODER_ADDR"
            )
        timeout = 10.0 if remaining is None else max(0.001, min(10.0, remaining))
        try:
            reply = encoder.Encode(
                encoder_pb2.EncodeRequest(image=query.image, model_version=generation.version),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            passed_on = (
                grpc.StatusCode.INVALID_ARGUMENT,
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.NOT_FOUND,
            )
            code = exc.code() if exc.code() in passed_on else grpc.StatusCode.UNAVAILABLE
            raise QueryError(code, f"encoder: {exc.details()}") from None
        codes = {name: np.asarray([getattr(reply.code, name)]) for name in ("mu", "sigma", "z")}
        if not finite_rows(codes)[0]:
            raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, NON_FINITE_CODE)
        mu = np.asarray(reply.code.mu, dtype=np.float64)
        vector = np.asarray(reply.code.z, dtype=np.float64) if space == "z" else mu
        return Query(vector, None, generation.predict_category(mu), "")
    raise ValueError("query needs a vector, an item_id or an image")


def category_message(category: CategoryOf) -> common_pb2.CategoryPrediction:
    return common_pb2.CategoryPrediction(
        sub_category=category.sub_category,
        master_category=category.master_category,
        confidence=category.confidence,
        from_label=category.from_label,
    )


def image_url(item_id: str, stored_ref: str) -> str:
    """The gateway's URL path for an item's image; empty when no image file is stored for it.
    Server paths stay in the store: replies never show the server's file layout."""
    if not stored_ref or stored_ref == "inline":
        return ""
    return f"/api/image/{quote(item_id, safe='')}"


def item_message(generation: Generation, row: int) -> common_pb2.Item:
    meta = generation.metadata[row]
    item_id = generation.codes.item_ids[row]
    return common_pb2.Item(
        item_id=item_id,
        category=meta.get("sub_category", ""),
        article_type=meta.get("article_type", ""),
        colour=meta.get("colour", ""),
        name=meta.get("name", ""),
        image_ref=image_url(item_id, meta.get("image_ref", "")),
        master_category=meta.get("master_category", ""),
        sub_category=meta.get("sub_category", ""),
        gender=meta.get("gender", ""),
        usage=meta.get("usage", ""),
        season=meta.get("season", ""),
    )


def scored_items(
    generation: Generation,
    rows: np.ndarray,
    scores: np.ndarray,
    partitioning_name: str,
    space: str,
) -> list[common_pb2.ScoredItem]:
    """Results with each item's partition under the request's partitioning and its k-means cluster."""
    names = generation.partitionings[partitioning_name].by_space[space]
    kmeans = generation.partitionings.get(KMEANS)
    clusters = kmeans.by_space[space].labels if kmeans else None
    return [
        common_pb2.ScoredItem(
            item=item_message(generation, row),
            score=score,
            cluster=int(clusters[row]) if clusters is not None else -1,
            partition=names.names[names.labels[row]],
        )
        for row, score in zip(rows.tolist(), scores.tolist(), strict=True)
    ]


def scored_hits(hits: list[Hit], partitioning_name: str, space: str) -> list[common_pb2.ScoredItem]:
    """scored_items for merged hits, each from its own segment of a live generation."""
    return [
        scored
        for segment, row, score in hits
        for scored in scored_items(
            segment, np.array([row]), np.array([score]), partitioning_name, space
        )
    ]


def resolve_live(
    query: common_pb2.Query,
    live: LiveGeneration,
    method: str,
    encoder: encoder_pb2_grpc.EncoderServiceStub | None,
    remaining: float | None,
    max_abs: float,
    fetch: Callable[[int, str], ItemRecord | None] | None = None,
) -> list[Query]:
    """The query as each segment of a live generation knows it: the segment holding a catalogue
    item knows its row (so it is left out of its own results); the others see its code only."""
    owner = live.base
    if query.WhichOneof("source") == "item_id":
        located = live.locate(query.item_id)
        if located is None and (query.item_id in live.overlay.deleted or fetch is None):
            raise LookupError(f"unknown item {query.item_id!r} in generation {live.version}")
        if located is not None:
            owner = located[0]
    resolved = resolve(query, owner, method, encoder, remaining, max_abs, fetch)
    return [
        resolved if segment is owner else dataclasses.replace(resolved, row=None)
        for segment in live.segments
    ]


class QuerySettings(ServiceSettings):
    """Settings shared by the services that answer queries from the served generation.

    Each service names its own HOST/PORT variables (RETRIEVAL_*, RECOMMENDER_*): its `Settings`
    subclass declares `host` and `port` with those variables as their aliases."""

    encoder_addr: str = Field(
        "127.0.0.1:50051", description="The encoder (host:port), for queries by photo."
    )
    host: str = Field(description="Address to listen on (the subclass names its variable).")
    port: Port = Field(description="gRPC port (the subclass names its variable).")
    kmeans_k: NonNegativeInt = Field(
        16, description="Clusters of the k-means partitioning of a generation (0: none)."
    )
    max_abs_latent: PositiveFloat = Field(
        100.0,
        description="Largest absolute value accepted in a caller's latent vector (a value "
        "beyond it is refused as INVALID_ARGUMENT).",
    )
    faiss_threads: PositiveInt = Field(
        1,
        description="FAISS threads per search: the server already runs requests in parallel, "
        "and for a single query FAISS's threads cost more than they save (p99 13 ms -> 6 ms at "
        "1M).",
    )
    shard_count: PositiveInt = Field(
        1,
        description="Shards the catalogue is cut into; one address per shard goes into the "
        "clients' RETRIEVAL_ADDR / RECOMMENDER_ADDR.",
    )
    shard_index: NonNegativeInt = Field(
        0, description="This process's shard: the items whose id hashes to it (0..SHARD_COUNT-1)."
    )
    index_kind: str = Field(
        IndexOptions.kind,
        description="flat: exact, every partition one list; ivf: k-means sublists per "
        "partition, NPROBE of them probed.",
    )
    nprobe: PositiveInt = Field(
        IndexOptions.nprobe,
        description="IVF sublists probed per search (recall@10 >= 0.99 at the default, "
        "docs/benchmarks.md `scale`).",
    )
    methods: Annotated[tuple[str, ...], NoDecode] = Field(
        RANKING_METHODS,
        validation_alias="SEARCH_METHODS",
        description="The ranking methods indexed, comma-separated; each costs a copy of the "
        "codes (docs/deploy: memory).",
    )

    @field_validator("shard_index")
    @classmethod
    def _shard_index(cls, index: int, info: ValidationInfo) -> int:
        count = info.data.get("shard_count")  # absent when SHARD_COUNT is bad: reported itself
        if count is not None and index >= count:
            raise ValueError(f"must be in 0..SHARD_COUNT-1 = 0..{count - 1}, got {index}")
        return index

    @field_validator("index_kind")
    @classmethod
    def _index_kind(cls, kind: str) -> str:
        IndexOptions(kind=kind)  # ValueError naming the kinds there are
        return kind

    @field_validator("methods", mode="before")
    @classmethod
    def _split_methods(cls, value: object) -> object:
        return _methods(value) if isinstance(value, str) else value

    @property
    def shard(self) -> Shard | None:
        """This process's shard of the catalogue; None when it holds every item."""
        return Shard(self.shard_index, self.shard_count) if self.shard_count > 1 else None

    @property
    def index(self) -> IndexOptions:
        return IndexOptions(kind=self.index_kind, nprobe=self.nprobe)


def _methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in methods if m not in RANKING_METHODS]
    if unknown or not methods:
        named = f"unknown ranking methods {unknown}" if unknown else "no ranking method"
        raise ValueError(f"{named}; choose from {', '.join(RANKING_METHODS)}")
    return methods


class GenerationServicer:
    """Base of the query servicers: the held generation and the encoder for photo queries."""

    def __init__(self, encoder: encoder_pb2_grpc.EncoderServiceStub, max_abs_latent: float):
        self.holder: GenerationHolder | None = None
        self.encoder = encoder
        self.max_abs_latent = max_abs_latent
        self.shard: Shard | None = None
        self.store: CodeStore | None = None
        # Per served version on a shard: the whole generation's partitions (pairing order).
        self.shared: dict[int, SharedPartitions] = {}

    def fetch(self) -> Callable[[int, str], ItemRecord | None] | None:
        """How `resolve` reads an item this process does not hold: from the store, on a shard."""
        return self.store.item if self.shard is not None and self.store is not None else None

    def shard_fields(self) -> dict:
        """The reply's shard_count and shards: which part of the catalogue it ranks."""
        shard = self.shard or Shard(0, 1)
        return {"shard_count": shard.count, "shards": [shard.index]}

    def generation(self, context) -> LiveGeneration:
        generation = self.holder.current if self.holder else None  # one reference per request
        if generation is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no generation of codes is served yet")
        return generation


def _builder(
    settings: QuerySettings, store: CodeStore, servicer: GenerationServicer
) -> Callable[[int], LiveGeneration]:
    """How this process builds a served generation (whole, or its shard of it), ready to follow
    the generation's live changes."""
    shard = settings.shard

    def build(version: int) -> LiveGeneration:
        if shard is None:
            generation = generations.build(
                store,
                version,
                k=settings.kmeans_k,
                index_options=settings.index,
                methods=settings.methods,
            )
            return LiveGeneration.of(generation, generation.position, settings.methods)
        shared = sharded_generation.shared_partitions(store, version, settings.kmeans_k)
        generation = sharded_generation.build_shard(
            store, version, shard, settings.kmeans_k, shared, settings.index, settings.methods
        )
        # Requests still on the generation being replaced keep its shared state.
        held = servicer.holder.current if servicer.holder else None
        kept = {v: p for v, p in servicer.shared.items() if held and v == held.version}
        servicer.shared = {**kept, version: shared}
        return LiveGeneration.of(generation, generation.position, settings.methods, shard.owns)

    return build


@contextmanager
def run_query_server(
    settings: QuerySettings,
    servicer: GenerationServicer,
    register: Callable[[grpc.Server], None],
    service_name: str,
) -> Iterator[RunningServer]:
    """Serve, and report SERVING once the served generation's indexes are loaded (on a shard:
    its own items, under the whole generation's partitions)."""
    store = CodeStore.from_url(settings.redis_url)
    servicer.store, servicer.shard = store, settings.shard

    # OpenMP's thread count is per thread, so each request thread sets its own.
    def limit_faiss_threads() -> None:
        faiss.omp_set_num_threads(settings.faiss_threads)

    with grpc_server(
        register,
        (service_name,),
        settings.host,
        settings.port,
        thread_initializer=limit_faiss_threads,
        auth=settings.auth,
    ) as running:
        replica = metrics.ReplicaMetrics(
            service_name.rsplit(".", 1)[-1].removesuffix("Service").lower()
        )
        build = replica.timed_build(_builder(settings, store, servicer))

        def installed(generation: LiveGeneration) -> None:
            replica.installed(generation)
            running.set_serving(True)

        servicer.holder = GenerationHolder(
            store, build, installed, follow=True, on_changes=replica.changes
        )
        servicer.holder.start()
        try:
            yield running
        finally:
            servicer.holder.stop()
