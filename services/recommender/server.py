"""RecommenderService.Recommend: similar items in the query's partition and pairings from the others (eq. 3)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from atelier.recommend import recommend
from atelier.search import query_space
from atelier.v1 import encoder_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from services.common import queries
from services.common.runtime import RunningServer
from services.recommender.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name


class RecommenderServicer(
    queries.GenerationServicer, recommender_pb2_grpc.RecommenderServiceServicer
):
    def Recommend(self, request, context):
        generation = self.generation(context)
        try:
            method = queries.method_name(request.method)
            k = queries.check_k(request.k)
            if request.partition not in recommender_pb2.Partition.values():
                raise queries.QueryError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown partition {request.partition}"
                )
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
        index = (
            generation.categories
            if request.partition == recommender_pb2.PARTITION_CATEGORY
            else generation.kmeans
        )
        space = query_space(method)
        names = index.partitions[space].names
        try:
            result = recommend(index, method, vector, k, exclude_row=own_row)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return recommender_pb2.RecommendResponse(
            query_partition=names[result.home],
            similar=recommender_pb2.PartitionList(
                partition=names[result.home],
                items=queries.scored_items(generation, *result.similar, space),
            ),
            pairings=[
                recommender_pb2.PartitionList(
                    partition=names[other],
                    items=queries.scored_items(generation, rows, scores, space),
                )
                for other, (rows, scores) in result.pairings.items()
            ],
            model_version=generation.version,
        )


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    with grpc.insecure_channel(settings.encoder_addr) as channel:
        servicer = RecommenderServicer(
            encoder_pb2_grpc.EncoderServiceStub(channel), settings.max_abs_latent
        )
        with queries.run_query_server(
            settings,
            servicer,
            lambda server: recommender_pb2_grpc.add_RecommenderServiceServicer_to_server(
                servicer, server
            ),
            SERVICE_NAME,
            with_categories=True,
        ) as running:
            yield running
