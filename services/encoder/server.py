"""EncoderService: translate gRPC requests to atelier.jobs and the model client, and back."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from atelier import jobs
from atelier.catalogue import ImageError, decode_image
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from services.common.model_client import ModelClient, ModelShape, status_of
from services.common.runtime import RunningServer, grpc_server
from services.encoder.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = encoder_pb2.DESCRIPTOR.services_by_name["EncoderService"].full_name
JOB_STATES = {
    jobs.JobState.QUEUED: common_pb2.JOB_STATE_QUEUED,
    jobs.JobState.RUNNING: common_pb2.JOB_STATE_RUNNING,
    jobs.JobState.SUCCEEDED: common_pb2.JOB_STATE_SUCCEEDED,
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
        self.enqueue = enqueue

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
        code = common_pb2.LatentCode(mu=codes["mu"][0], sigma=codes["sigma"][0], z=codes["z"][0])
        return encoder_pb2.EncodeResponse(code=code, model_version=version)

    def SubmitCatalogue(self, request, context):
        shape = self._resolve(request.model_version, context)
        source = request.WhichOneof("source")
        if source == "csv_path":
            try:
                entries = jobs.entries_from_csv(request.csv_path, request.image_dir or None)
            except FileNotFoundError:
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"catalogue CSV not found: {request.csv_path}"
                )
            except (ValueError, KeyError) as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad catalogue CSV: {exc}")
        elif source == "entries":
            entries = [
                jobs.normalise_entry(
                    e.item.item_id, item_metadata(e.item), e.item.image_ref, e.image
                )
                for e in request.entries.entries
            ]
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give csv_path or entries")
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

        def enqueue(job_id: str, item_ids: list[str]) -> None:
            self.enqueue(job_id, item_ids, *size)

        try:
            job_id = jobs.submit_or_fail(
                self.store, shape.version, entries, enqueue, self.settings.chunk_size
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except jobs.QueueUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the queue refused the job: {exc}")
        log.info("job %s: %d items for model version %d", job_id, len(entries), shape.version)
        return job_message(jobs.progress(self.store, job_id))

    def GetJob(self, request, context):
        progress = jobs.progress(
            self.store, request.job_id, max(0, min(request.max_failures, 10_000))
        )
        if progress is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown job {request.job_id!r}")
        return job_message(progress)

    def CancelJob(self, request, context):
        if not self.store.job_exists(request.job_id):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown job {request.job_id!r}")
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


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    from services.encoder.tasks import QUEUE, encode_chunk

    store = CodeStore.from_url(settings.redis_url)
    model = ModelClient(settings.model_server_addr, settings.model_timeout)

    def enqueue(job_id: str, item_ids: list[str], height: int, width: int) -> None:
        encode_chunk.apply_async(args=(job_id, item_ids, height, width), queue=QUEUE)

    servicer = EncoderServicer(settings, store, model, enqueue)
    with grpc_server(
        lambda server: encoder_pb2_grpc.add_EncoderServiceServicer_to_server(servicer, server),
        (SERVICE_NAME,),
        settings.host,
        settings.port,
        auth=settings.auth,
    ) as running:
        store.redis.ping()
        model.shape()  # the model server answers: now we are ready
        running.set_serving(True)
        yield running
    model.close()
