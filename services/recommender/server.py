"""RecommenderService.Recommend: similar items in the query's partition and pairings from the others (eq. 3)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from atelier.generation import KMEANS, MASTER, SUB
from atelier.live import complete_the_look as live_complete_the_look
from atelier.search import query_space
from atelier.sharded_generation import pairing_order
from atelier.v1 import encoder_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from services.common import queries
from services.common.auth import with_token
from services.common.runtime import RunningServer
from services.common.tls import make_channel
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
        live = self.generation(context)
        with queries.statuses(context):
            method = queries.method_name(request.method)
            k = queries.check_k(request.k)
            if request.partition not in PARTITIONS:
                raise ValueError(f"unknown partition {request.partition}")
            per_segment = queries.resolve_live(
                request.query,
                live,
                method,
                self.encoder,
                context.time_remaining(),
                self.max_abs_latent,
                self.fetch(),
            )
            partitioning = PARTITIONS[request.partition]
            # Every target, explicitly in the whole generation's order, so shards list (and rank)
            # pairings alike; the same order the recommender takes by default on one node.
            targets = list(request.target_categories)
            if not targets and partitioning in live.base.partitionings:
                targets = pairing_order(live.base, partitioning, self.shared.get(live.version))
            look = live_complete_the_look(
                live,
                method,
                per_segment,
                k,
                partitioning_name=partitioning,
                targets=targets,
                match_gender=request.match_gender if request.HasField("match_gender") else True,
                gender=request.gender,
                exact=request.exact,
            )
            space = query_space(method)
            rank = {name: place for place, name in reversed(list(enumerate(targets)))}

            def listed(name: str, hits, place: int = 0) -> recommender_pb2.PartitionList:
                items = queries.scored_hits(hits, look.partitioning, space)
                return recommender_pb2.PartitionList(partition=name, items=items, rank=place)

            return recommender_pb2.RecommendResponse(
                query_partition=look.home,
                similar=listed(look.home, look.similar),
                pairings=[listed(name, hits, rank[name]) for name, hits in look.pairings.items()],
                model_version=live.version,
                query_category=queries.category_message(per_segment[0].category),
                matched_gender=look.matched_gender,
                **self.shard_fields(),
            )


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    # Queries by photo call the encoder with this service's own token.
    with with_token(make_channel(settings.encoder_addr), settings.auth.outgoing_token()) as channel:
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
