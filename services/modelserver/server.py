"""An embedded TensorFlow Serving PredictionService: loads the SavedModels and calls their signatures.

It speaks the tensorflow-serving-api contract, so every client works unchanged against a real
`tensorflow/serving` container (see deploy/README.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import any_pb2

from atelier.modelstore import ServableInputError, ServableNotFound, ServableRegistry
from atelier.tfserving.tensorflow.core.framework import types_pb2
from atelier.tfserving.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from services.common.metrics import MODEL_BATCH_SIZE
from services.common.runtime import MAX_MESSAGE_BYTES, RunningServer, grpc_server
from services.modelserver.config import Settings

log = logging.getLogger(__name__)
SERVICE_NAME = "tensorflow.serving.PredictionService"


# A shape without values is filled with zeros: bound what a request may ask to allocate.
MAX_INPUT_ELEMENTS = MAX_MESSAGE_BYTES // 4
DTYPE_NAMES = set(types_pb2.DataType.values())


def check_input(key: str, tensor, max_batch: int) -> None:
    """An input's dtype and declared shape before anything is allocated for it: float (every
    signature here takes DT_FLOAT, and numpy has no type for some of TensorFlow's), known,
    non-negative dimensions, at most max_batch rows and MAX_INPUT_ELEMENTS values."""
    if tensor.dtype != types_pb2.DT_FLOAT:
        name = (
            types_pb2.DataType.Name(tensor.dtype) if tensor.dtype in DTYPE_NAMES else tensor.dtype
        )
        raise ServableInputError(
            f"input {key[:40]!r} has dtype {name}; the signatures take DT_FLOAT"
        )
    dims = [d.size for d in tensor.tensor_shape.dim]
    if tensor.tensor_shape.unknown_rank or any(d < 0 for d in dims):
        raise ServableInputError(f"input {key[:40]!r} needs a fully known shape, got {dims}")
    if dims and dims[0] > max_batch:
        raise ServableInputError(f"input {key[:40]!r} has {dims[0]} rows; at most {max_batch}")
    if math.prod(dims) > MAX_INPUT_ELEMENTS:
        raise ServableInputError(
            f"input {key[:40]!r} has more than {MAX_INPUT_ELEMENTS} values (shape {dims})"
        )


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, registry: ServableRegistry, max_batch: int = 1024):
        self.registry = registry
        self.max_batch = max_batch

    def _servable(self, model_spec, context):
        version = model_spec.version.value if model_spec.HasField("version") else None
        try:
            return self.registry.get(model_spec.name, version)
        except ServableNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    def Predict(self, request, context):
        servable = self._servable(request.model_spec, context)
        try:
            for key, tensor in request.inputs.items():
                check_input(key, tensor, self.max_batch)
        except ServableInputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            inputs = {key: tf.make_ndarray(tensor) for key, tensor in request.inputs.items()}
        except (TypeError, ValueError) as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unreadable input tensor: {exc}")
        try:
            outputs = servable.run(request.model_spec.signature_name, inputs)
        except ServableNotFound as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ServableInputError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except tf.errors.InvalidArgumentError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, exc.message)
        wanted = set(request.output_filter) or set(outputs)
        unknown = wanted - set(outputs)
        if unknown:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"unknown outputs in output_filter: {sorted(unknown)}",
            )
        signature = request.model_spec.signature_name or "serving_default"
        rows = next((len(value) for value in inputs.values() if np.ndim(value)), 1)
        MODEL_BATCH_SIZE.labels(servable.name, signature).observe(rows)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature
        for key in wanted:
            response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key]))
        return response

    def GetModelMetadata(self, request, context):
        if list(request.metadata_field) not in ([], ["signature_def"]):
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "only metadata_field 'signature_def' is supported"
            )
        servable = self._servable(request.model_spec, context)
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for name, definition in servable.signature_defs.items():
            if not name.startswith("__"):
                signature_map.signature_def[name].CopyFrom(definition)
        packed = any_pb2.Any()
        packed.Pack(signature_map)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].CopyFrom(packed)
        return response


@contextmanager
def run_server(settings: Settings) -> Iterator[RunningServer]:
    """Load and warm up every model version, then serve; health turns SERVING once ready."""
    registry = ServableRegistry(settings.models_dir)
    if not registry.names():
        raise SystemExit(
            f"no SavedModels under {settings.models_dir} (expected <name>/<version>/saved_model.pb)"
        )
    servicer = PredictionServicer(registry, settings.max_batch)

    def register(server: grpc.Server) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(servicer, server)

    with grpc_server(
        register,
        (SERVICE_NAME,),
        settings.host,
        settings.port,
        settings.workers,
        auth=None,  # internal: only the encoder, workers and decoder call it, with no token
    ) as running:
        replayed = registry.warm_up()
        log.info(
            "serving %s (%d warm-up requests replayed)",
            {n: registry.versions(n) for n in registry.names()},
            replayed,
        )
        running.set_serving(True)
        yield running
