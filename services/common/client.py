"""A small client for the four Atelier services, with a deadline on every call (used by the CLI and gateway)."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atelier.latent import RANKING_METHODS
from atelier.v1 import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.auth import client_token, with_token
from services.common.fanout import ShardedRecommender, ShardedRetrieval, shard_addresses
from services.common.tls import ClientTLS, make_channel

METHODS = {
    name: common_pb2.RankingMethod.Value(f"RANKING_METHOD_{name.upper()}")
    for name in RANKING_METHODS
}
SCOPES = {
    "sub_category": retrieval_pb2.SEARCH_SCOPE_SUB_CATEGORY,
    "master_category": retrieval_pb2.SEARCH_SCOPE_MASTER_CATEGORY,
    "catalogue": retrieval_pb2.SEARCH_SCOPE_CATALOGUE,
    "cluster": retrieval_pb2.SEARCH_SCOPE_CLUSTER,
}
PARTITIONS = {
    "sub_category": recommender_pb2.PARTITION_SUB_CATEGORY,
    "master_category": recommender_pb2.PARTITION_MASTER_CATEGORY,
    "kmeans": recommender_pb2.PARTITION_KMEANS,
}


SHARDED = ("retrieval", "recommender")


@dataclass(frozen=True)
class Addresses:
    """Where the services listen. Retrieval and the recommender take one address per shard, in
    shard order (a sequence, or one comma-separated string): one address, one node, every item."""

    encoder: str
    decoder: str
    retrieval: str | tuple[str, ...]
    recommender: str | tuple[str, ...]

    def __post_init__(self) -> None:
        for name in SHARDED:
            object.__setattr__(self, name, shard_addresses(getattr(self, name)))

    def of(self, name: str) -> tuple[str, ...]:
        """A service's addresses: one, or one per shard."""
        value = getattr(self, name)
        return value if isinstance(value, tuple) else (value,)

    @classmethod
    def from_env(cls) -> Addresses:
        return cls(
            encoder=os.environ.get("ENCODER_ADDR", "127.0.0.1:50051"),
            decoder=os.environ.get("DECODER_ADDR", "127.0.0.1:50052"),
            retrieval=os.environ.get("RETRIEVAL_ADDR", "127.0.0.1:50053"),
            recommender=os.environ.get("RECOMMENDER_ADDR", "127.0.0.1:50054"),
        )


def make_query(
    item_id: str | None = None, image: bytes | None = None, vector: Sequence[float] | None = None
) -> common_pb2.Query:
    given = [v is not None for v in (item_id, image, vector)]
    if sum(given) != 1:
        raise ValueError("give exactly one of an item id, an image or a code")
    if item_id is not None:
        return common_pb2.Query(item_id=item_id)
    if image is not None:
        return common_pb2.Query(image=image)
    return common_pb2.Query(vector=common_pb2.LatentVector(values=list(vector or [])))


class AtelierClient:
    """Stubs of the four services; every call carries `token` as `authorization: Bearer`.

    token=None takes $ATELIER_TOKEN, else the file at $ATELIER_TOKEN_FILE; "" sends none. TLS as
    `tls` says (None: from the environment); a call refused as overloaded (RESOURCE_EXHAUSTED) is
    retried up to 3 times, after the server's hint, within the call's deadline. With several
    retrieval or recommender addresses (shards), a query goes to all of them (services.common.fanout).
    """

    def __init__(
        self,
        addresses: Addresses,
        timeout: float = 10.0,
        tls: ClientTLS | None = None,
        token: str | None = None,
    ):
        tls = ClientTLS.from_env() if tls is None else tls
        self.timeout = timeout
        self._owns_channels = True
        self._channels = {
            # With a dns:///name:port address, round robin spreads calls over every replica.
            name: [
                make_channel(address, tls, round_robin=True, retry_overload=True)
                for address in addresses.of(name)
            ]
            for name in ("encoder", "decoder", *SHARDED)
        }
        # Health is an open service: probes need no token, and share the long-lived channels.
        self._health = {
            name: [health_pb2_grpc.HealthStub(channel) for channel in channels]
            for name, channels in self._channels.items()
        }
        self._bind(client_token(token) if token is None else token)

    def _bind(self, token: str | None) -> None:
        self.token = token or None
        channels = {
            name: [with_token(channel, self.token) for channel in opened]
            for name, opened in self._channels.items()
        }
        self.encoder = encoder_pb2_grpc.EncoderServiceStub(channels["encoder"][0])
        self.decoder = decoder_pb2_grpc.DecoderServiceStub(channels["decoder"][0])
        self.retrieval = ShardedRetrieval(
            [retrieval_pb2_grpc.RetrievalServiceStub(c) for c in channels["retrieval"]]
        )
        self.recommender = ShardedRecommender(
            [recommender_pb2_grpc.RecommenderServiceStub(c) for c in channels["recommender"]]
        )

    def for_token(self, token: str | None) -> AtelierClient:
        """A client over the same connections that sends `token` instead (the gateway passes each
        caller's own token on). Closing it leaves the connections open."""
        view = copy.copy(self)
        view._owns_channels = False
        view._bind(token)
        return view

    def close(self) -> None:
        if not self._owns_channels:
            return
        for channels in self._channels.values():
            for channel in channels:
                channel.close()

    def serving(
        self,
        names: Sequence[str] = ("decoder", "retrieval", "recommender"),
        timeout: float = 2.0,
    ) -> dict[str, bool]:
        """Whether each named service reports SERVING (a sharded one: every shard), asked in
        parallel over the client's own long-lived channels (a probe opens no connection of its
        own)."""
        calls = {
            name: [
                stub.Check.future(health_pb2.HealthCheckRequest(), timeout=timeout)
                for stub in self._health[name]
            ]
            for name in names
        }
        serving = {}
        for name, shards in calls.items():
            serving[name] = True
            for call in shards:
                try:
                    up = call.result().status == health_pb2.HealthCheckResponse.SERVING
                except grpc.RpcError:
                    up = False
                serving[name] = serving[name] and up
        return serving

    def search(
        self,
        query: common_pb2.Query,
        method: str = "fixed_eps",
        scope: str = "sub_category",
        k: int = 10,
        category: str = "",
        nprobe: int = 0,
        allow_partial: bool = False,
    ) -> retrieval_pb2.SearchResponse:
        request = retrieval_pb2.SearchRequest(
            query=query,
            method=METHODS[method],
            scope=SCOPES[scope],
            k=k,
            category=category,
            nprobe=nprobe,
            allow_partial=allow_partial,
        )
        return self.retrieval.Search(request, timeout=self.timeout)

    def recommend(
        self,
        query: common_pb2.Query,
        method: str = "fixed_eps",
        partition: str = "sub_category",
        k: int = 10,
        targets: Sequence[str] = (),
        match_gender: bool = True,
        gender: str = "",
        allow_partial: bool = False,
    ) -> recommender_pb2.RecommendResponse:
        request = recommender_pb2.RecommendRequest(
            query=query,
            method=METHODS[method],
            partition=PARTITIONS[partition],
            k=k,
            target_categories=list(targets),
            match_gender=match_gender,
            gender=gender,
            allow_partial=allow_partial,
        )
        return self.recommender.Recommend(request, timeout=self.timeout)

    def list_categories(self) -> decoder_pb2.ListCategoriesResponse:
        return self.decoder.ListCategories(
            decoder_pb2.ListCategoriesRequest(), timeout=self.timeout
        )

    def decode(self, vectors: Sequence[Sequence[float]]) -> decoder_pb2.DecodeResponse:
        request = decoder_pb2.DecodeRequest(
            codes=[common_pb2.LatentVector(values=list(v)) for v in vectors]
        )
        return self.decoder.Decode(request, timeout=self.timeout)

    def random_start(
        self, category: str = "", seed: int | None = None
    ) -> decoder_pb2.RandomStartResponse:
        request = decoder_pb2.RandomStartRequest(category=category)
        if seed is not None:
            request.seed = seed
        return self.decoder.RandomStart(request, timeout=self.timeout)

    def traverse(
        self, start: Sequence[float], dimension: int, low: float, high: float, steps: int
    ) -> decoder_pb2.DecodeResponse:
        request = decoder_pb2.TraverseRequest(
            start=common_pb2.LatentVector(values=list(start)),
            dimension=dimension,
            low=low,
            high=high,
            steps=steps,
        )
        return self.decoder.Traverse(request, timeout=self.timeout)

    def encode(self, image: bytes) -> encoder_pb2.EncodeResponse:
        return self.encoder.Encode(encoder_pb2.EncodeRequest(image=image), timeout=self.timeout)

    def list_generations(self) -> encoder_pb2.ListGenerationsResponse:
        return self.encoder.ListGenerations(
            encoder_pb2.ListGenerationsRequest(), timeout=self.timeout
        )

    def serve_generation(self, version: int) -> encoder_pb2.ServeGenerationResponse:
        return self.encoder.ServeGeneration(
            encoder_pb2.ServeGenerationRequest(model_version=version), timeout=self.timeout
        )

    def remove_generation(self, version: int) -> encoder_pb2.RemoveGenerationResponse:
        return self.encoder.RemoveGeneration(
            encoder_pb2.RemoveGenerationRequest(model_version=version), timeout=self.timeout
        )


def follow_job(
    encoder: encoder_pb2_grpc.EncoderServiceStub,
    job: common_pb2.Job,
    description: str = "encoding",
    timeout: float | None = None,
    on_update=None,
    max_failures: int = 50,
) -> common_pb2.Job:
    """Poll a job to its end with a progress bar (done, failed, rate, ETA); returns the final Job."""
    import time

    from tqdm import tqdm

    finished = (
        common_pb2.JOB_STATE_SUCCEEDED,
        common_pb2.JOB_STATE_FAILED,
        common_pb2.JOB_STATE_CANCELLED,
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    with tqdm(total=job.total, unit="item", desc=description) as bar:
        while True:
            job = encoder.GetJob(
                encoder_pb2.GetJobRequest(job_id=job.job_id, max_failures=max_failures), timeout=10
            )
            bar.update(job.done + job.failed - bar.n)
            bar.set_postfix(
                failed=job.failed,
                rate=f"{job.items_per_second:.0f}/s",
                eta=f"{job.eta_seconds:.0f}s",
            )
            if on_update:
                on_update(job)
            if job.state in finished:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job.job_id} not finished after {timeout:.0f}s ({job.done}/{job.total})"
                )
            time.sleep(0.3)
