"""PersonalizationService: translate gRPC requests to atelier.interactions, atelier.personal_jobs
and atelier.foryou, and back.

The served preference model (and the generation of codes it was trained on) is held like the
query services hold their generation: built beside the old one on a switch and swapped in one
assignment. The service is SERVING once Redis answers and the served model, if any, is loaded:
interactions and jobs need no model.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import grpc
import kombu.exceptions
import numpy as np
import redis

from atelier import foryou, personal_jobs
from atelier import generation as generations
from atelier.confinement import PathNotAllowed
from atelier.interactions import MAX_EVENTS_PER_CALL, Event, InteractionLog
from atelier.personal_store import PREFERENCE_CHANNEL, PreferenceStore
from atelier.store import CodeStore
from atelier.v1 import (
    common_pb2,
    personalization_pb2,
    personalization_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
)
from services.common import metrics, tracing
from services.common.auth import with_token
from services.common.fanout import ShardedRecommender, shard_addresses
from services.common.generation_holder import GenerationHolder
from services.common.model_client import ModelClient, status_of, to_png
from services.common.queries import METHODS, item_message
from services.common.redisconf import UNAVAILABLE_ERRORS
from services.common.runtime import RunningServer, UnavailableOn, grpc_server
from services.common.tls import make_channel
from services.personalization.config import Settings

log = logging.getLogger(__name__)
pb = personalization_pb2
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PersonalizationService"].full_name
KINDS = {
    pb.INTERACTION_KIND_VIEW: "view",
    pb.INTERACTION_KIND_CLICK: "click",
    pb.INTERACTION_KIND_CART: "cart",
    pb.INTERACTION_KIND_PURCHASE: "purchase",
}
OUTCOMES = {
    "accepted": pb.EVENT_OUTCOME_ACCEPTED,
    "duplicate": pb.EVENT_OUTCOME_DUPLICATE,
    "rejected": pb.EVENT_OUTCOME_REJECTED,
}
FALLBACKS = {foryou.NONE: pb.FALLBACK_NONE, foryou.POPULARITY: pb.FALLBACK_POPULARITY}
JOB_KINDS = {
    "import": pb.PERSONALIZATION_JOB_KIND_IMPORT,
    "train": pb.PERSONALIZATION_JOB_KIND_TRAIN,
}
JOB_STATES = {
    personal_jobs.JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    personal_jobs.JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    personal_jobs.JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    personal_jobs.JobState.FAILED: common_pb2.JOB_STATE_FAILED,
}
MAX_CANDIDATES = 10_000
MAX_DESIGN_STEPS = 2000
# The recommender is asked for this many times k per list, so re-ranking has room to work.
RERANK_POOL = 5
# Passed on from the recommender as the caller's own problem; anything else is UNAVAILABLE.
PASSED_ON = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DEADLINE_EXCEEDED,
)


def job_message(view: personal_jobs.JobView) -> pb.PersonalizationJob:
    return pb.PersonalizationJob(
        job_id=view.job_id,
        kind=JOB_KINDS[view.kind],
        state=JOB_STATES[view.state],
        total=view.total,
        done=view.done,
        failed=view.failed,
        duplicates=view.duplicates,
        failures=[pb.RowFailure(line=line, reason=reason) for line, reason in view.failures],
        created_unix=view.created,
        finished_unix=view.finished,
        reason=view.reason,
        preference_version=view.preference_version,
        model_kind=view.model_kind,
        model_version=view.model_version,
    )


def _limit(value: int, default: int, low: int, high: int, name: str) -> int:
    value = value or default
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, got {value}")
    return value


class PersonalizationServicer(personalization_pb2_grpc.PersonalizationServiceServicer):
    def __init__(
        self,
        settings: Settings,
        codes: CodeStore,
        prefs: PreferenceStore,
        recommender: recommender_pb2_grpc.RecommenderServiceStub,
        model: ModelClient,
        enqueue_import: Callable[[str], None],
        enqueue_training: Callable[[str], None],
    ):
        self.settings = settings
        self.codes = codes
        self.prefs = prefs
        self.events = InteractionLog(codes.redis)
        self.recommender = recommender
        self.model = model
        self.enqueue_import = enqueue_import
        self.enqueue_training = enqueue_training
        self.holder: GenerationHolder | None = None

    # --- helpers ---

    def _served_generation(self, context) -> int:
        version = self.codes.served_version()
        if version is None:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                "no generation of codes is served yet; encode and serve a catalogue first",
            )
        return version

    def _model(self, context) -> foryou.ForYou:
        current = self.holder.current if self.holder else None  # one reference per request
        if current is None:
            served = self.prefs.served_version()
            if served is None:
                context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "no preference model is served yet; train one with TrainPreferenceModel",
                )
            context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"preference model {served} is still loading; retry shortly",
            )
        return current

    def _timeout(self, context, limit: float) -> float:
        remaining = context.time_remaining()
        return limit if remaining is None else max(0.001, min(limit, remaining))

    def _scored(self, index: foryou.ForYou, rows, scores) -> list[common_pb2.ScoredItem]:
        generation = index.generation
        return [
            common_pb2.ScoredItem(
                item=item_message(generation, row),
                score=score,
                cluster=-1,
                partition=str(generation.attributes[generations.SUB][row]),
            )
            for row, score in zip(
                np.asarray(rows).tolist(), np.asarray(scores).tolist(), strict=True
            )
        ]

    def _submit(self, job_id: str, enqueue: Callable[[str], None], context) -> None:
        try:
            enqueue(job_id)
        except (kombu.exceptions.OperationalError, redis.RedisError) as exc:
            log.warning("job %s: could not queue it: %s", job_id, exc)
            self.prefs.set_job_fields(
                job_id,
                reason="the queue refused the job; submit it again",
                finished=repr(time.time()),
            )
            context.abort(grpc.StatusCode.UNAVAILABLE, f"job {job_id}: the queue is unavailable")

    # --- interactions ---

    def RecordInteractions(self, request, context):
        if not request.events:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send at least one event")
        if len(request.events) > MAX_EVENTS_PER_CALL:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"at most {MAX_EVENTS_PER_CALL} events per call, got {len(request.events)}",
            )
        version = self._served_generation(context)
        events = [
            Event(e.event_id, e.user_id, e.item_id, KINDS.get(e.kind, ""), e.timestamp_unix)
            for e in request.events
        ]
        outcomes = self.events.record(events, version, time.time())
        counts = {name: 0 for name in OUTCOMES}
        for outcome in outcomes:
            counts[outcome.outcome] += 1
        return pb.RecordInteractionsResponse(
            results=[
                pb.EventResult(event_id=o.event_id, outcome=OUTCOMES[o.outcome], reason=o.reason)
                for o in outcomes
            ],
            accepted=counts["accepted"],
            duplicates=counts["duplicate"],
            rejected=counts["rejected"],
            model_version=version,
        )

    def ImportInteractions(self, request, context):
        version = self._served_generation(context)
        try:
            job_id = personal_jobs.submit_import(
                self.prefs,
                self.settings.catalogue_roots,
                request.csv_path,
                version,
                self.settings.job_ttl_seconds,
            )
        except PathNotAllowed as exc:
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.outside
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            context.abort(code, f"interactions path refused: {exc}")
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, "interactions CSV not found")
        except ValueError as exc:  # a bad header or encoding: the reason names the line
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad interactions CSV: {exc}")
        except OSError as exc:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"interactions CSV unreadable: {exc.strerror or type(exc).__name__}",
            )
        self._submit(job_id, self.enqueue_import, context)
        log.info("import %s submitted against generation %d", job_id, version)
        return job_message(personal_jobs.progress(self.prefs, job_id))

    def GetPersonalizationJob(self, request, context):
        view = personal_jobs.progress(
            self.prefs, request.job_id, max(0, min(request.max_failures, 10_000))
        )
        if view is None:
            shown = request.job_id if len(request.job_id) <= 64 else request.job_id[:64] + "..."
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"unknown job {shown!r} (job ids are 32 lowercase hex characters)",
            )
        return job_message(view)

    # --- models ---

    def TrainPreferenceModel(self, request, context):
        version = self._served_generation(context)
        try:
            job_id = personal_jobs.submit_training(
                self.prefs,
                request.model_kind,
                request.epochs,
                request.seed,
                request.serve if request.HasField("serve") else True,
                version,
                self.settings.job_ttl_seconds,
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        self._submit(job_id, self.enqueue_training, context)
        log.info("training %s submitted on generation %d", job_id, version)
        return job_message(personal_jobs.progress(self.prefs, job_id))

    def ListPreferenceModels(self, request, context):
        served = self.prefs.served_version()
        infos = [self.prefs.info(v) for v in self.prefs.versions()]
        return pb.ListPreferenceModelsResponse(
            models=[
                pb.PreferenceModelInfo(
                    preference_version=i.version,
                    model_kind=i.kind,
                    model_version=i.model_version,
                    users=i.users,
                    items=i.items,
                    interactions=i.interactions,
                    trained_unix=i.trained_at,
                    served=i.version == served,
                )
                for i in infos
                if i is not None
            ],
            served_version=served or 0,
        )

    def ServePreferenceModel(self, request, context):
        previous = self.prefs.served_version()
        try:
            self.prefs.serve(request.preference_version)
        except KeyError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("now serving preference model %d (was %s)", request.preference_version, previous)
        return pb.ServePreferenceModelResponse(
            preference_version=request.preference_version, previous_version=previous or 0
        )

    def ListUsers(self, request, context):
        index = self._model(context)
        try:
            limit = _limit(request.limit, 20, 1, 1000, "limit")
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.ListUsersResponse(
            users=[pb.UserInfo(user_id=u, interactions=n) for u, n in index.top_users(limit)],
            preference_version=index.version,
        )

    # --- serving ---

    def RankForUser(self, request, context):
        index = self._model(context)
        generation = index.generation
        try:
            if not request.user_id:
                raise ValueError("user_id is empty")
            if len(request.candidate_item_ids) > MAX_CANDIDATES:
                raise ValueError(
                    f"at most {MAX_CANDIDATES} candidates, got {len(request.candidate_item_ids)}"
                )
            unknown: list[str] = []
            rows = None
            if request.category:
                rows = generation.rows_of_category(request.category)
            if request.candidate_item_ids:
                wanted = []
                for item_id in dict.fromkeys(request.candidate_item_ids):
                    row = generation.row_of.get(item_id)
                    if row is None:
                        unknown.append(item_id)
                    else:
                        wanted.append(row)
                candidates = np.asarray(wanted, dtype=np.int64)
                rows = candidates if rows is None else np.intersect1d(candidates, rows)
            default = len(request.candidate_item_ids) or 10
            k = _limit(request.k, min(default, foryou.MAX_K), 1, foryou.MAX_K, "k")
        except LookupError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ranked = index.rank(request.user_id, k, rows)
        return pb.RankForUserResponse(
            items=self._scored(index, ranked.rows, ranked.scores),
            fallback=FALLBACKS[ranked.fallback],
            preference_version=index.version,
            model_version=generation.version,
            unknown_item_ids=unknown,
        )

    def SimilarForUser(self, request, context):
        index = self._model(context)
        try:
            if not request.user_id:
                raise ValueError("user_id is empty")
            if not request.item_id:
                raise ValueError("item_id is empty")
            if request.method not in METHODS:
                raise ValueError(f"unknown ranking method {request.method}")
            k = _limit(request.k, 8, 1, 250, "k")
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ask = recommender_pb2.RecommendRequest(
            query=common_pb2.Query(item_id=request.item_id),
            method=request.method,
            k=min(1000, k * RERANK_POOL),
            target_categories=request.target_categories,
            match_gender=request.match_gender if request.HasField("match_gender") else True,
        )
        try:
            reply = self.recommender.Recommend(
                ask, timeout=self._timeout(context, self.settings.call_timeout)
            )
        except grpc.RpcError as exc:
            code = exc.code() if exc.code() in PASSED_ON else grpc.StatusCode.UNAVAILABLE
            context.abort(code, f"recommender: {exc.details()}")
        fallback = foryou.NONE

        def reranked(found: recommender_pb2.PartitionList) -> recommender_pb2.PartitionList:
            nonlocal fallback
            items = list(found.items)
            scores, fallback = index.rerank(request.user_id, [s.item.item_id for s in items])
            # Items the model's generation lacks keep the recommender's order, after the rest.
            order = sorted(
                range(len(items)),
                key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i),
            )[:k]
            out = []
            for i in order:
                scored = common_pb2.ScoredItem()
                scored.CopyFrom(items[i])
                scored.score = scores[i] if scores[i] is not None else float("-inf")
                out.append(scored)
            return recommender_pb2.PartitionList(partition=found.partition, items=out)

        return pb.SimilarForUserResponse(
            similar=reranked(reply.similar),
            pairings=[reranked(p) for p in reply.pairings],
            fallback=FALLBACKS[fallback],
            preference_version=index.version,
            model_version=reply.model_version,
        )

    def DesignForUser(self, request, context):
        index = self._model(context)
        generation = index.generation
        try:
            if not request.user_id:
                raise ValueError("user_id is empty")
            steps = _limit(request.steps, 200, 1, MAX_DESIGN_STEPS, "steps")
            nearest = _limit(request.nearest, 6, 1, 50, "nearest")
            start = request.WhichOneof("start")
            if start == "item_id":
                row = generation.row_of.get(request.item_id)
                if row is None:
                    raise LookupError(
                        f"unknown item {request.item_id[:80]!r} in generation {generation.version}"
                    )
                category = str(generation.attributes[generations.SUB][row])
            elif start == "category" and request.category:
                row, category = None, request.category
            else:
                raise ValueError("give a category or an item_id to start from")
            rows = generation.rows_of_category(category)
        except LookupError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc.args[0]))
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            design = index.design(request.user_id, rows, row, category, steps, nearest)
        except foryou.UnknownUser:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"user {request.user_id[:80]!r} has no history in preference model "
                f"{index.version}; record interactions and train again (RankForUser falls back "
                "to popularity, a design cannot)",
            )
        try:
            images, _ = self.model.decode(
                design.code[None].astype(np.float32),
                generation.version,
                self._timeout(context, self.settings.model_timeout),
            )
        except grpc.RpcError as exc:
            context.abort(*status_of(exc))
        return pb.DesignForUserResponse(
            png=to_png(images[0]),
            code=common_pb2.LatentVector(values=design.code.tolist()),
            score=design.score,
            start_score=design.start_score,
            best_item_score=design.best_score,
            best_item=self._scored(index, [design.best_row], [design.best_score])[0],
            nearest=self._scored(index, design.nearest_rows, -design.nearest_distances),
            max_abs_sigma=design.max_abs_sigma,
            steps=design.steps,
            category=design.category,
            preference_version=index.version,
            model_version=generation.version,
        )


def build_index(codes: CodeStore, prefs: PreferenceStore, version: int) -> foryou.ForYou:
    """The served model over its own generation. LookupError (the holder keeps what it has and
    tries again) when either is missing or unreadable."""
    record = prefs.model(version)
    if record is None:
        raise LookupError(f"preference model {version} does not exist")
    generation = generations.build(codes, record.model_version, searchable=False)
    try:
        return foryou.build(record, generation)
    except (ValueError, KeyError) as exc:
        raise LookupError(f"preference model {version} cannot be loaded: {exc}") from exc


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    from services.personalization.tasks import (
        IMPORT_QUEUE,
        TRAIN_QUEUE,
        enqueue_import,
        enqueue_training,
    )

    tracing.instrument_celery()
    codes = CodeStore.from_url(settings.redis_url)
    prefs = PreferenceStore(codes.redis)
    # Each queue's app keeps its unacknowledged tasks under its own prefix (celery_app.py).
    queues = {queue: f"{queue}:unacked" for queue in (IMPORT_QUEUE, TRAIN_QUEUE)}
    queue_state = metrics.StateCollector(
        lambda: {metrics.QUEUE_DEPTH: metrics.queue_depths(codes.redis, queues)}
    )
    model = ModelClient(settings.model_server_addr, settings.model_timeout)
    # SimilarForUser calls the recommender (every shard of it) with this service's own token.
    with contextlib.ExitStack() as channels, metrics.registered(queue_state):
        recommender = ShardedRecommender(
            [
                recommender_pb2_grpc.RecommenderServiceStub(
                    channels.enter_context(
                        with_token(make_channel(address), settings.auth.outgoing_token())
                    )
                )
                for address in shard_addresses(settings.recommender_addr)
            ]
        )
        servicer = PersonalizationServicer(
            settings,
            codes,
            prefs,
            recommender,
            model,
            enqueue_import,
            enqueue_training,
        )
        with grpc_server(
            lambda server: personalization_pb2_grpc.add_PersonalizationServiceServicer_to_server(
                servicer, server
            ),
            (SERVICE_NAME,),
            settings.host,
            settings.port,
            auth=settings.auth,
            service_interceptors=[UnavailableOn(UNAVAILABLE_ERRORS, "the interactions store")],
        ) as running:
            codes.redis.ping()
            holder = GenerationHolder(
                prefs,  # type: ignore[arg-type]  # any store with served_version() and redis
                functools.partial(build_index, codes, prefs),
                channel=PREFERENCE_CHANNEL,
            )
            servicer.holder = holder
            holder.start()  # loads the served model, if any, before SERVING
            running.set_serving(True)
            try:
                yield running
            finally:
                holder.stop()
    model.close()
