"""DecoderService: latent vectors to PNGs (Decode), slider starting points (RandomStart), Fig. 5 strips (Traverse)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np

from atelier import generation as generations
from atelier.generation import Generation
from atelier.latent import validate_vector
from atelier.sliders import slider_basis
from atelier.store import CodeStore
from atelier.v1 import common_pb2, decoder_pb2, decoder_pb2_grpc
from services.common.generation_holder import GenerationHolder
from services.common.model_client import ModelClient, status_of, to_png
from services.common.queries import category_message, item_message
from services.common.runtime import RunningServer, grpc_server
from services.decoder.config import Settings

log = logging.getLogger(__name__)
MAX_DRAWS = 8
SERVICE_NAME = decoder_pb2.DESCRIPTOR.services_by_name["DecoderService"].full_name


class DecoderServicer(decoder_pb2_grpc.DecoderServiceServicer):
    def __init__(
        self,
        settings: Settings,
        model: ModelClient,
        holder: GenerationHolder | None,
        store: CodeStore | None = None,
    ):
        self.settings = settings
        self.model = model
        self.holder = holder
        self.store = store

    def _latent_dim(self, version: int, context) -> int:
        try:
            return self.model.shape(
                version or None, context.time_remaining(), decoder=True
            ).latent_dim
        except grpc.RpcError as exc:
            context.abort(*status_of(exc))

    def _version(self, requested: int) -> int:
        generation = self.holder.current if self.holder else None
        return requested or (generation.version if generation else 0)

    def _decode(self, vectors: np.ndarray, version: int, context) -> decoder_pb2.DecodeResponse:
        try:
            images, served = self.model.decode(
                vectors.astype(np.float32), version or None, context.time_remaining()
            )
        except grpc.RpcError as exc:
            context.abort(*status_of(exc))
        return decoder_pb2.DecodeResponse(
            png=[to_png(image) for image in images],
            model_version=served,
            height=images.shape[1],
            width=images.shape[2],
        )

    def Decode(self, request, context):
        if not 1 <= len(request.codes) <= self.settings.max_batch:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"send between 1 and {self.settings.max_batch} codes, got {len(request.codes)}",
            )
        version = self._version(request.model_version)
        dim = self._latent_dim(version, context)
        try:
            vectors = np.stack(
                [
                    validate_vector(c.values, dim, self.settings.max_abs_latent)
                    for c in request.codes
                ]
            )
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return self._decode(vectors, version, context)

    def _served(self, context) -> Generation:
        generation = self.holder.current if self.holder else None
        if generation is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no generation of codes is served yet")
        return generation

    def RandomStart(self, request, context):
        generation = self._served(context)
        rows = np.arange(len(generation.codes))
        if request.category:
            try:
                rows = generation.rows_of_category(request.category)
            except LookupError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        if request.HasField("seed") and request.seed < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"seed must be >= 0, got {request.seed}"
            )
        rng = np.random.default_rng(request.seed if request.HasField("seed") else None)
        # The decoder holds μ only; the item's whole code is read from the store, which also
        # tells an item deleted since the generation was loaded (then another one is drawn).
        for _ in range(MAX_DRAWS):
            row = int(rng.choice(rows))
            record = self.store.item(generation.version, generation.codes.item_ids[row])
            if record is not None:
                break
        else:
            context.abort(
                grpc.StatusCode.UNAVAILABLE, "the items drawn were deleted meanwhile; try again"
            )
        codes = generation.codes
        key = request.category or ""
        basis = generation.slider_state(key, lambda: slider_basis(codes.mu[rows]))
        return decoder_pb2.RandomStartResponse(
            item=item_message(generation, row),
            code=common_pb2.LatentCode(mu=record.mu, sigma=record.sigma, z=record.z),
            model_version=generation.version,
            lower=generation.lower,
            upper=generation.upper,
            sliders=decoder_pb2.SliderBasis(
                origin=common_pb2.LatentVector(values=basis.origin),
                directions=[common_pb2.LatentVector(values=d) for d in basis.directions],
                lower=basis.lower,
                upper=basis.upper,
                labels=basis.labels,
                explained_variance=basis.explained_variance,
            ),
            category=category_message(generation.category_of_row(row)),
        )

    def ListCategories(self, request, context):
        generation = self._served(context)
        return decoder_pb2.ListCategoriesResponse(
            categories=[
                decoder_pb2.CategoryCount(sub_category=sub, master_category=master, items=count)
                for sub, master, count in generation.category_counts()
            ],
            model_version=generation.version,
        )

    def Traverse(self, request, context):
        version = self._version(request.model_version)
        dim = self._latent_dim(version, context)
        limit = self.settings.max_abs_latent
        try:
            start = validate_vector(request.start.values, dim, limit)
            if not 0 <= request.dimension < dim:
                raise ValueError(
                    f"dimension must be between 0 and {dim - 1}, got {request.dimension}"
                )
            if not 2 <= request.steps <= self.settings.max_steps:
                raise ValueError(
                    f"steps must be between 2 and {self.settings.max_steps}, got {request.steps}"
                )
            validate_vector([request.low, request.high], 2, limit)
            if not request.low < request.high:
                raise ValueError(f"low ({request.low:g}) must be below high ({request.high:g})")
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        strip = np.repeat(start[None], request.steps, axis=0)
        strip[:, request.dimension] = np.linspace(request.low, request.high, request.steps)
        return self._decode(strip, version, context)


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    store = CodeStore.from_url(settings.redis_url)
    model = ModelClient(settings.model_server_addr, settings.model_timeout)
    servicer = DecoderServicer(settings, model, None, store)
    with grpc_server(
        lambda server: decoder_pb2_grpc.add_DecoderServiceServicer_to_server(servicer, server),
        (SERVICE_NAME,),
        settings.host,
        settings.port,
        auth=settings.auth,
    ) as running:
        model.shape()  # the model server answers
        # μ only (sliders, bounds, categories): a third of the codes' memory.
        build = functools.partial(generations.build, store, searchable=False, vectors=("mu",))
        servicer.holder = GenerationHolder(store, build, lambda _g: running.set_serving(True))
        servicer.holder.start()  # RandomStart needs a served generation: SERVING once it is loaded
        try:
            yield running
        finally:
            servicer.holder.stop()
            model.close()
