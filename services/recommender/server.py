"""RecommenderService.Recommend: similar items in the query's partition and pairings from the others (eq. 3)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from atelier.generation import KMEANS, MASTER, SUB
from atelier.recommend import gender_rule, recommend
from atelier.search import query_space
from atelier.v1 import encoder_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from services.common import queries
from services.common.runtime import RunningServer
from services.recommender.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name


PARTITIONS = {
    recommender_pb2.PARTITION_UNSPECIFIED: SUB,
    recommender_pb2.PARTITION_SUB_CATEGORY: SUB,
    recommender_pb2.PARTITION_MASTER_CATEGORY: MASTER,
    recommender_pb2.PARTITION_KMEANS: KMEANS,
}


class RecommenderServicer(
    queries.GenerationServicer, recommender_pb2_grpc.RecommenderServiceServicer
):
    def Recommend(self, request, context):
        generation = self.generation(context)
        try:
            method = queries.method_name(request.method)
            k = queries.check_k(request.k)
            if request.partition not in PARTITIONS:
                raise queries.QueryError(
                    grpc.StatusCode.INVALID_ARGUMENT, f"unknown partition {request.partition}"
                )
            partitioning = queries.partitioning(generation, PARTITIONS[request.partition])
            query = queries.resolve(
                request.query,
                generation,
                method,
                self.encoder,
                context.time_remaining(),
                self.max_abs_latent,
            )
            home = queries.home_partition(partitioning, method, query, generation)
            targets = None
            if request.target_categories:
                unknown = [t for t in request.target_categories if partitioning.position(t) is None]
                if unknown:
                    raise queries.QueryError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"unknown target categories {unknown}; choose from "
                        f"{', '.join(partitioning.names)}",
                    )
                targets = [partitioning.position(t) for t in request.target_categories]
        except queries.QueryError as exc:
            context.abort(exc.code, exc.message)
        match_gender = request.match_gender if request.HasField("match_gender") else True
        gender = (query.gender or request.gender) if match_gender else ""
        space = query_space(method)
        try:
            result = recommend(
                partitioning,
                method,
                query.vector,
                k,
                home,
                targets,
                gender_rule(gender),
                exclude_row=query.row,
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        names = partitioning.names
        return recommender_pb2.RecommendResponse(
            query_partition=names[result.home],
            similar=recommender_pb2.PartitionList(
                partition=names[result.home],
                items=queries.scored_items(generation, *result.similar, partitioning.name, space),
            ),
            pairings=[
                recommender_pb2.PartitionList(
                    partition=names[other],
                    items=queries.scored_items(generation, rows, scores, partitioning.name, space),
                )
                for other, (rows, scores) in result.pairings.items()
            ],
            model_version=generation.version,
            query_category=queries.category_message(query.category),
            matched_gender=gender if gender_rule(gender) else "",
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
        ) as running:
            yield running
