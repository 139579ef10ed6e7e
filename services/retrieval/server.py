"""RetrievalService.Search: translate the request, search the served generation, translate back."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from atelier import generation as generations
from atelier.search import query_space
from atelier.store import CodeStore
from atelier.v1 import encoder_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common import queries
from services.common.generation_holder import GenerationHolder
from services.common.runtime import RunningServer, grpc_server
from services.retrieval.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name


class RetrievalServicer(retrieval_pb2_grpc.RetrievalServiceServicer):
    def __init__(self, holder: GenerationHolder | None, encoder, max_abs_latent: float):
        self.holder = holder
        self.encoder = encoder
        self.max_abs_latent = max_abs_latent

    def Search(self, request, context):
        generation = self.holder.current if self.holder else None  # one reference per request
        if generation is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no generation of codes is served yet")
        try:
            method = queries.method_name(request.method)
            k = queries.check_k(request.k)
            if request.scope not in (
                0,
                retrieval_pb2.SEARCH_SCOPE_CLUSTER,
                retrieval_pb2.SEARCH_SCOPE_CATALOGUE,
            ):
                raise queries.QueryError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown scope {request.scope}"
                )
            if request.nprobe < 0:
                raise queries.QueryError(grpc.StatusCode.INVALID_ARGUMENT, "nprobe must be >= 0")
            vector, own_row = queries.resolve(
                request.query,
                generation,
                method,
                self.encoder,
                context.time_remaining(),
                self.max_abs_latent,
            )
        except queries.QueryError as exc:
            context.abort(exc.code, exc.message)
        space = query_space(method)
        partition = generation.kmeans.partitions[space]
        nearest = partition.nearest(vector, max(1, min(request.nprobe, len(partition.centres))))
        searched = None if request.scope == retrieval_pb2.SEARCH_SCOPE_CATALOGUE else nearest
        exclude_own = request.exclude_query_item if request.HasField("exclude_query_item") else True
        exclude = own_row if exclude_own else None
        try:
            rows, scores = generation.kmeans.search(
                method, vector, k, searched, request.category or None, exclude_row=exclude
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return retrieval_pb2.SearchResponse(
            results=queries.scored_items(generation, rows, scores, space),
            query_cluster=int(nearest[0]),
            model_version=generation.version,
        )


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    store = CodeStore.from_url(settings.redis_url)
    channel = grpc.insecure_channel(settings.encoder_addr)
    servicer = RetrievalServicer(
        None, encoder_pb2_grpc.EncoderServiceStub(channel), settings.max_abs_latent
    )
    with grpc_server(
        lambda server: retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(servicer, server),
        (SERVICE_NAME,),
        settings.host,
        settings.port,
    ) as running:
        build = functools.partial(generations.build, store, k=settings.kmeans_k)
        servicer.holder = GenerationHolder(
            store, lambda v: build(v), lambda _g: running.set_serving(True)
        )
        servicer.holder.start()  # SERVING once a generation's indexes are loaded
        try:
            yield running
        finally:
            servicer.holder.stop()
            channel.close()
