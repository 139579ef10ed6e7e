"""EncoderService: translate gRPC requests to atelier.jobs and the model client, and back."""

from __future__ import annotations

import csv
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import kombu.exceptions
import redis

from atelier import jobs
from atelier.catalogue import ImageError, decode_image
from atelier.confinement import PathNotAllowed
from atelier.latent import NON_FINITE_CODE, finite_rows
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from services.common import metrics, tracing
from services.common.model_client import ModelClient, ModelShape, status_of
from services.common.redisconf import UNAVAILABLE_ERRORS
from services.common.runtime import RunningServer, UnavailableOn, grpc_server
from services.encoder.config import Settings

log = logging.getLogger(__name__)
# Items per UpsertItems / DeleteItems call: one synchronous model call and one Redis script;
# larger sets go through a catalogue job.
MAX_UPSERT_ITEMS = 256
MAX_DELETE_ITEMS = 10_000
SERVICE_NAME = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name
JOB_STATES = {
    jobs.JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    jobs.JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    jobs.JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
    jobs.JobState.FAILED: common_pb2.JOB_STATE_FAILED,
    jobs.JobState.CANCELLED: common_pb2.JOB_STATE_CANCELLED,
}


def job_message(progress: jobs.JobProgress) -> common_pb2.Job:
    return common_pb2.Job(
        job_id=progress.job_id,
        model_version=progress.model_version,
        state=JOB_STATES[progress.state],
        total=progress.total,
        done=progress.done,
        failed=progress.failed,
        items_per_second=progress.items_per_second,
        eta_seconds=progress.eta_seconds,
        failures=[
            common_pb2.ItemFailure(item_id=k, reason=v) for k, v in progress.failures.items()
        ],
        created_unix=progress.created,
        finished_unix=progress.finished,
        reason=progress.reason,
    )


def item_metadata(item: common_pb2.Item) -> dict[str, str]:
    """The labels of a submitted item; the first version's `category` is its subCategory."""
    return {
        "article_type": item.article_type,
        "sub_category": item.sub_category or item.category,
        "master_category": item.master_category,
        "gender": item.gender,
        "usage": item.usage,
        "season": item.season,
        "colour": item.colour,
        "name": item.name,
    }


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, settings: Settings, store: CodeStore, model: ModelClient, enqueue):
        self.settings = settings
        self.store = store
        self.model = model
        self.enqueue = enqueue  # (job id, chunk index)

    def _resolve(self, requested: int, context) -> ModelShape:
        version = requested or self.store.served_version() or None
        try:
            return self.model.shape(version, context.time_remaining())
        except grpc.RpcError as exc:
            code, message = status_of(exc)
            context.abort(code, f"model version {version or 'latest'}: {message}")

    def _encode_fn(self, context):
        def encode(images, version):
            return self.model.encode(images, version, context.time_remaining())[0]

        return encode

    def Encode(self, request, context):
        if not request.image:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
        shape = self._resolve(request.model_version, context)
        try:
            pixels = decode_image(request.image, (shape.image_height, shape.image_width))
        except ImageError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad image: {exc}")
        try:
            codes, version = self.model.encode(
                pixels[None], shape.version, context.time_remaining()
            )
        except grpc.RpcError as exc:
            context.abort(*status_of(exc))
        if not finite_rows(codes)[0]:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, NON_FINITE_CODE)
        code = common_pb2.LatentCode(mu=codes["mu"][0], sigma=codes["sigma"][0], z=codes["z"][0])
        return encoder_pb2.EncodeResponse(code=code, model_version=version)

    def _entries(self, request, context) -> list[dict]:
        """The request's job entries, confined to the catalogue roots and within the limits."""
        policy = self.settings.job_policy
        source = request.WhichOneof("source")
        try:
            if source == "csv_path":
                return jobs.entries_from_csv(
                    self.settings.catalogue_roots,
                    request.csv_path,
                    request.image_dir or None,
                    policy.max_job_entries,
                )
            if source == "entries":
                entries = [
                    jobs.normalise_entry(
                        e.item.item_id, item_metadata(e.item), e.item.image_ref, e.image
                    )
                    for e in request.entries.entries
                ]
                jobs.validate_entries(entries, policy)
                return entries
        except PathNotAllowed as exc:
            code = (
                grpc.StatusCode.PERMISSION_DENIED
                if exc.outside
                else grpc.StatusCode.INVALID_ARGUMENT
            )
            context.abort(code, f"catalogue path refused: {exc}")
        except FileNotFoundError:
            context.abort(grpc.StatusCode.NOT_FOUND, "catalogue CSV not found")
        except jobs.LimitExceeded as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ValueError as exc:  # the catalogue's reasons name a line, never its text
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad catalogue: {exc}")
        except (KeyError, csv.Error) as exc:
            # The reason may quote the file (its header row): log it, never answer with it.
            log.info("bad catalogue CSV %r: %s", request.csv_path[:200], exc)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad catalogue CSV: expected UTF-8 with the Kaggle styles.csv columns "
                "(id, masterCategory, subCategory, articleType, ...) or id,image_path[,category]",
            )
        except OSError as exc:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"catalogue CSV unreadable: {exc.strerror or type(exc).__name__}",
            )
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give csv_path or entries")

    def _register(self, shape: ModelShape, context) -> tuple[int, int]:
        """Register the model version to encode with in the store; its image size."""
        size = (shape.image_height, shape.image_width)
        try:
            jobs.ensure_model_registered(
                self.store,
                shape.version,
                size,
                shape.latent_dim,
                self.settings.models_dir,
                self._encode_fn(context),
            )
        except grpc.RpcError as exc:
            context.abort(*status_of(exc))
        return size

    def SubmitCatalogue(self, request, context):
        shape = self._resolve(request.model_version, context)
        entries = self._entries(request, context)
        size = self._register(shape, context)
        try:
            job_id = jobs.submit(
                self.store, shape.version, entries, size, self.enqueue, self.settings.job_policy
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except jobs.QueueUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"job {exc.job_id}: {exc}")
        log.info("job %s: %d items for model version %d", job_id, len(entries), shape.version)
        return job_message(jobs.progress(self.store, job_id))

    def UpsertItems(self, request, context):
        if not request.entries:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give at least one entry")
        if len(request.entries) > MAX_UPSERT_ITEMS:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"UpsertItems takes at most {MAX_UPSERT_ITEMS} items; submit a catalogue job "
                f"for more, got {len(request.entries)}",
            )
        entries = [
            jobs.normalise_entry(e.item.item_id, item_metadata(e.item), e.item.image_ref, e.image)
            for e in request.entries
        ]
        try:
            jobs.validate_entries(entries, self.settings.job_policy)
        except ValueError as exc:  # LimitExceeded included
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        shape = self._resolve(request.model_version, context)
        size = self._register(shape, context)
        try:
            written, failures = jobs.upsert_items(
                self.store,
                self._encode_fn(context),
                shape.version,
                size,
                entries,
                self.settings.catalogue_roots,
            )
        except grpc.RpcError as exc:
            context.abort(*status_of(exc))
        done = set(written)
        return encoder_pb2.UpsertItemsResponse(
            outcomes=[
                encoder_pb2.ItemOutcome(
                    item_id=str(e["item_id"]),
                    ok=str(e["item_id"]) in done,
                    reason=failures.get(str(e["item_id"]), ""),
                )
                for e in entries
            ],
            model_version=shape.version,
            change_sequence=self._change_sequence(shape.version),
        )

    def DeleteItems(self, request, context):
        if not request.item_ids:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give at least one item id")
        if len(request.item_ids) > MAX_DELETE_ITEMS:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"DeleteItems takes at most {MAX_DELETE_ITEMS} ids, got {len(request.item_ids)}",
            )
        version = request.model_version or self.store.served_version()
        if not version or self.store.model(version) is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"model version {version or 'served'} is not registered"
            )
        ids = list(dict.fromkeys(request.item_ids))
        held = self.store.items_held(version, ids)
        deleted = self.store.delete_codes(version, [i for i, h in zip(ids, held, strict=True) if h])
        return encoder_pb2.DeleteItemsResponse(
            deleted=deleted,
            not_found=[i for i, h in zip(ids, held, strict=True) if not h],
            model_version=version,
            change_sequence=self._change_sequence(version),
        )

    def _change_sequence(self, version: int) -> int:
        return self.store.change_position(version) if self.store.served_version() == version else 0

    def GetJob(self, request, context):
        progress = jobs.progress(
            self.store, request.job_id, max(0, min(request.max_failures, 10_000))
        )
        if progress is None:
            context.abort(grpc.StatusCode.NOT_FOUND, _unknown(request.job_id))
        if progress.state not in jobs.FINISHED and progress.queued_chunks < progress.chunks:
            # A job whose encoder died mid-queueing, or whose workers could not top it up.
            try:
                jobs.pump(
                    self.store,
                    request.job_id,
                    self.enqueue,
                    self.settings.max_queued_chunks,
                    wait=0.0,
                )
            except Exception as exc:
                log.warning("job %s: could not queue its next chunks: %s", request.job_id, exc)
        return job_message(progress)

    def CancelJob(self, request, context):
        if not self.store.job_exists(request.job_id):
            context.abort(grpc.StatusCode.NOT_FOUND, _unknown(request.job_id))
        self.store.cancel_job(request.job_id)
        return job_message(jobs.progress(self.store, request.job_id))

    def ListGenerations(self, request, context):
        served = self.store.served_version()
        return encoder_pb2.ListGenerationsResponse(
            generations=[
                encoder_pb2.GenerationInfo(
                    model_version=version,
                    items=self.store.item_count(version),
                    served=version == served,
                )
                for version in self.store.model_versions()
            ],
            served_version=served or 0,
        )

    def ServeGeneration(self, request, context):
        previous = self.store.served_version()
        try:
            self.store.serve(request.model_version)
        except KeyError:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model version {request.model_version} is not registered",
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("now serving generation %d (was %s)", request.model_version, previous)
        return encoder_pb2.ServeGenerationResponse(
            model_version=request.model_version, previous_version=previous or 0
        )

    def RemoveGeneration(self, request, context):
        if self.store.model(request.model_version) is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"model version {request.model_version} is not registered",
            )
        try:
            removed = self.store.remove_generation(request.model_version)
        except ValueError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        log.info("removed generation %d (%d keys)", request.model_version, removed)
        return encoder_pb2.RemoveGenerationResponse(removed_keys=removed)


def _unknown(job_id: str) -> str:
    shown = job_id if len(job_id) <= 64 else job_id[:64] + "..."
    return f"unknown job {shown!r} (job ids are 32 lowercase hex characters)"


def scan_jobs(settings: Settings, store: CodeStore, enqueue, stop: threading.Event) -> None:
    """At startup, then every interval: carry on the jobs an encoder left half-queued, and queue
    again the chunks of jobs whose tasks the queue lost (atelier.jobs.requeue_lost)."""
    from services.encoder.tasks import queue_idle

    while True:
        try:
            resumed = jobs.resume(store, enqueue, settings.max_queued_chunks)
            if resumed:
                log.info("resumed queueing: %s", resumed)
            jobs.requeue_lost(
                store, enqueue, lambda: queue_idle(store.redis), settings.requeue_after
            )
        except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
            log.warning("cannot scan the jobs yet: %s", exc)
        except Exception:
            log.exception("the job scan failed; next try in %.0f s", settings.job_resume_interval)
        if stop.wait(settings.job_resume_interval):
            return


def _queue_state(store: CodeStore, queue: str) -> dict[str, metrics.Samples]:
    unfinished = jobs.unfinished(store)
    return {
        metrics.QUEUE_DEPTH: metrics.queue_depths(store.redis, {queue: "unacked"}),
        metrics.JOBS_ACTIVE: [({}, len(unfinished))],
        metrics.JOB_ITEMS: [
            ({"state": state}, sum(getattr(job, state) for job in unfinished))
            for state in ("total", "done", "failed")
        ],
    }


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    from services.encoder.tasks import QUEUE, enqueue

    tracing.instrument_celery()  # SubmitCatalogue's trace goes on through the queued tasks
    store = CodeStore.from_url(settings.redis_url)
    queue_state = metrics.StateCollector(lambda: _queue_state(store, QUEUE))
    model = ModelClient(settings.model_server_addr, settings.model_timeout)
    servicer = EncoderServicer(settings, store, model, enqueue)
    stop = threading.Event()
    with (
        metrics.registered(queue_state),
        grpc_server(
            lambda server: encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, server),
            (SERVICE_NAME,),
            settings.host,
            settings.port,
            auth=settings.auth,
            service_interceptors=[UnavailableOn(UNAVAILABLE_ERRORS, "the job store")],
        ) as running,
    ):
        store.redis.ping()
        for version, moved in store.migrate().items():
            log.info("generation %d: %d codes moved into blocks (the first layout)", version, moved)
        model.shape()  # the model server answers: now we are ready
        scan = threading.Thread(
            target=scan_jobs, args=(settings, store, enqueue, stop), name="job-scan", daemon=True
        )
        scan.start()
        running.set_serving(True)
        try:
            yield running
        finally:
            stop.set()
    model.close()
