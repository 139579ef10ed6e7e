"""EncoderService: translate gRPC requests to atelier.jobs and the model client, and back."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from atelier import jobs
from atelier.catalogue import ImageError, decode_image
from atelier.modelstore import read_metadata
from atelier.store import CodeStore, ModelRecord
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from services.common.model_client import ModelClient, ModelShape
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


class EncoderServicer(encoder_pb2_grpc.EncoderServiceServicer):
    def __init__(self, settings: Settings, store: CodeStore, model: ModelClient, enqueue):
        self.settings = settings
        self.store = store
        self.model = model
        self.enqueue = enqueue

    @functools.lru_cache(maxsize=32)  # noqa: B019 - one servicer per process, versions are few
    def _shape(self, version: int | None) -> ModelShape:
        return self.model.shape(version)

    def _resolve(self, requested: int, context) -> ModelShape:
        version = requested or self.store.served_version() or None
        try:
            return self._shape(version)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                context.abort(
                    grpc.StatusCode.NOT_FOUND, f"unknown model version {version}: {exc.details()}"
                )
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"model server: {exc.code().name}: {exc.details()}"
            )

    def _register(self, shape: ModelShape) -> None:
        if self.store.model(shape.version) is not None:
            return
        try:
            metadata = read_metadata(self.settings.models_dir, shape.version)
            epsilon, data_hash = metadata.epsilon, metadata.data_hash
        except FileNotFoundError:
            # No model files here (a remote TF Serving): ε = (z − μ)/σ from one probe encoding.
            probe = np.full((1, shape.image_height, shape.image_width, 3), 0.5, np.float32)
            codes, _ = self.model.encode(probe, shape.version)
            epsilon = ((codes["z"] - codes["mu"]) / codes["sigma"])[0]
            data_hash = ""
        self.store.register_model(
            ModelRecord(
                shape.version,
                shape.latent_dim,
                shape.image_height,
                shape.image_width,
                data_hash,
                epsilon,
            )
        )

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
            if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded while encoding")
            context.abort(
                grpc.StatusCode.UNAVAILABLE, f"model server: {exc.code().name}: {exc.details()}"
            )
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
            entries = []
            for entry in request.entries.entries:
                item = entry.item
                fields = {
                    "item_id": item.item_id,
                    "category": item.category,
                    "article_type": item.article_type or item.category,
                    "colour": item.colour,
                    "name": item.name,
                    "image_ref": item.image_ref,
                }
                if entry.image:
                    fields["image"] = entry.image
                entries.append(fields)
        else:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "give csv_path or entries")
        self._register(shape)

        def enqueue(job_id: str, item_ids: list[str]) -> None:
            self.enqueue(job_id, item_ids, shape.image_height, shape.image_width)

        try:
            job_id = jobs.submit(
                self.store, shape.version, entries, enqueue, self.settings.chunk_size
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
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
    ) as running:
        store.redis.ping()
        model.shape()  # the model server answers: now we are ready
        running.set_serving(True)
        yield running
    model.close()
