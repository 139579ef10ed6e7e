"""RecommenderService.Recommend: similar items in the query's partition and pairings from the others (eq. 3)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from atelier import generation as generations
from atelier.recommend import recommend
from atelier.search import query_space
from atelier.store import CodeStore
from atelier.v1 import encoder_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from services.common import queries
from services.common.generation_holder import GenerationHolder
from services.common.runtime import RunningServer, grpc_server
from services.recommender.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name


class RecommenderServicer(recommender_pb2_grpc.RecommenderServiceServicer):
    def __init__(self, holder: GenerationHolder | None, encoder, max_abs_latent: float):
        self.holder = holder
        self.encoder = encoder
        self.max_abs_latent = max_abs_latent

    def Recommend(self, request, context):
        generation = self.holder.current if self.holder else None  # one reference per request
        if generation is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no generation of codes is served yet")
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
    store = CodeStore.from_url(settings.redis_url)
    channel = grpc.insecure_channel(settings.encoder_addr)
    servicer = RecommenderServicer(
        None, encoder_pb2_grpc.EncoderServiceStub(channel), settings.max_abs_latent
    )
    with grpc_server(
        lambda server: recommender_pb2_grpc.add_RecommenderServiceServicer_to_server(
            servicer, server
        ),
        (SERVICE_NAME,),
        settings.host,
        settings.port,
    ) as running:
        build = functools.partial(
            generations.build, store, k=settings.kmeans_k, with_categories=True
        )
        servicer.holder = GenerationHolder(store, build, lambda _g: running.set_serving(True))
        servicer.holder.start()  # SERVING once a generation's indexes are loaded
        try:
            yield running
        finally:
            servicer.holder.stop()
            channel.close()
