"""RetrievalService.Search: translate the request, search the served generation, translate back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from atelier.search import query_space
from atelier.v1 import encoder_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common import queries
from services.common.runtime import RunningServer
from services.retrieval.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name
SCOPES = (
    retrieval_pb2.SEARCH_SCOPE_UNSPECIFIED,
    retrieval_pb2.SEARCH_SCOPE_CLUSTER,
    retrieval_pb2.SEARCH_SCOPE_CATALOGUE,
)


class RetrievalServicer(queries.GenerationServicer, retrieval_pb2_grpc.RetrievalServiceServicer):
    def Search(self, request, context):
        generation = self.generation(context)
        try:
            method = queries.method_name(request.method)
            k = queries.check_k(request.k)
            if request.scope not in SCOPES:
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
        try:
            rows, scores = generation.kmeans.search(
                method,
                vector,
                k,
                searched,
                request.category or None,
                own_row if exclude_own else None,
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
    with grpc.insecure_channel(settings.encoder_addr) as channel:
        servicer = RetrievalServicer(
            encoder_pb2_grpc.EncoderServiceStub(channel), settings.max_abs_latent
        )
        with queries.run_query_server(
            settings,
            servicer,
            lambda server: retrieval_pb2_grpc.add_RetrievalServiceServicer_to_server(
                servicer, server
            ),
            SERVICE_NAME,
        ) as running:
            yield running
