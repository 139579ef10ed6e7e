"""RetrievalService.Search: translate the request, search the served generation (or this
process's shard of it), translate back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from atelier.generation import KMEANS
from atelier.live import search as live_search
from atelier.search import query_space
from atelier.v1 import encoder_pb2_grpc, retrieval_pb2, retrieval_pb2_grpc
from services.common import queries
from services.common.auth import with_token
from services.common.runtime import RunningServer
from services.common.tls import make_channel
from services.retrieval.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = retrieval_pb2.DESCRIPTOR.services_by_name["RetrievalService"].full_name
SCOPES = {
    retrieval_pb2.SEARCH_SCOPE_UNSPECIFIED: "sub_category",
    retrieval_pb2.SEARCH_SCOPE_SUB_CATEGORY: "sub_category",
    retrieval_pb2.SEARCH_SCOPE_MASTER_CATEGORY: "master_category",
    retrieval_pb2.SEARCH_SCOPE_CLUSTER: "kmeans",
    retrieval_pb2.SEARCH_SCOPE_CATALOGUE: "catalogue",
}


class RetrievalServicer(queries.GenerationServicer, retrieval_pb2_grpc.RetrievalServiceServicer):
    def Search(self, request, context):
        live = self.generation(context)
        with queries.statuses(context):
            method = queries.method_name(request.method)
            k = queries.check_k(request.k)
            if request.scope not in SCOPES:
                raise ValueError(f"unknown scope {request.scope}")
            per_segment = queries.resolve_live(
                request.query,
                live,
                method,
                self.encoder,
                context.time_remaining(),
                self.max_abs_latent,
                self.fetch(),
            )
            hits, found = live_search(
                live,
                method,
                per_segment,
                k,
                scope=SCOPES[request.scope],
                nprobe=request.nprobe,
                category=request.category,
                exclude_query=(
                    request.exclude_query_item if request.HasField("exclude_query_item") else True
                ),
                exact=request.exact,
            )
            space = query_space(method)
            kmeans = live.base.partitionings.get(KMEANS)
            query = per_segment[0]
            return retrieval_pb2.SearchResponse(
                results=queries.scored_hits(hits, found.partitioning, space),
                query_cluster=(
                    int(kmeans.by_space[space].assign(query.vector)[0]) if kmeans else -1
                ),
                model_version=live.version,
                query_category=queries.category_message(query.category),
                searched=found.searched,
                **self.shard_fields(),
            )


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    # Queries by photo call the encoder with this service's own token.
    with with_token(make_channel(settings.encoder_addr), settings.auth.outgoing_token()) as channel:
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
