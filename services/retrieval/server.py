"""RetrievalService.Search: translate the request, search the served generation, translate back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from atelier.generation import KMEANS, MASTER, SUB
from atelier.search import query_space
from atelier.v1 import encoder_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common import queries
from services.common.runtime import RunningServer
from services.retrieval.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name
SCOPES = {
    retrieval_pb2.SEARCH_SCOPE_UNSPECIFIED: SUB,
    retrieval_pb2.SEARCH_SCOPE_SUB_CATEGORY: SUB,
    retrieval_pb2.SEARCH_SCOPE_MASTER_CATEGORY: MASTER,
    retrieval_pb2.SEARCH_SCOPE_CLUSTER: KMEANS,
    retrieval_pb2.SEARCH_SCOPE_CATALOGUE: None,  # every subCategory
}


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
            query = queries.resolve(
                request.query,
                generation,
                method,
                self.encoder,
                context.time_remaining(),
                self.max_abs_latent,
            )
            where = generation.category_where(request.category) if request.category else ()
            scope = SCOPES[request.scope]
            space = query_space(method)
            if scope is None:
                partitioning, searched = queries.partitioning(generation, SUB), None
            elif scope == KMEANS:
                partitioning = queries.partitioning(generation, KMEANS)
                centres = partitioning.by_space[space]
                searched = centres.nearest(
                    query.vector, max(1, min(request.nprobe, len(centres.centres)))
                ).tolist()
            else:
                partitioning = queries.partitioning(generation, scope)
                searched = [queries.home_partition(partitioning, method, query, generation)]
        except queries.QueryError as exc:
            context.abort(exc.code, exc.message)
        except LookupError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        exclude_own = request.exclude_query_item if request.HasField("exclude_query_item") else True
        index_partitions = (
            None
            if searched is None
            else [member for p in searched for member in partitioning.members[p]]
        )
        try:
            rows, scores = partitioning.index.search(
                method,
                query.vector,
                k,
                index_partitions,
                where,
                query.row if exclude_own else None,
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        kmeans = generation.partitionings.get(KMEANS)
        return retrieval_pb2.SearchResponse(
            results=queries.scored_items(generation, rows, scores, partitioning.name, space),
            query_cluster=(int(kmeans.by_space[space].assign(query.vector)[0]) if kmeans else -1),
            model_version=generation.version,
            query_category=queries.category_message(query.category),
            searched=[] if searched is None else [partitioning.names[p] for p in searched],
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
