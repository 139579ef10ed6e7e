"""A client of TensorFlow Serving's PredictionService for the encoder and decoder models.

Works against the embedded model server and a real `tensorflow/serving` container alike.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import grpc
import numpy as np
from PIL import Image

from atelier.modelinfo import DECODE_SIGNATURE, DECODER_NAME, ENCODE_SIGNATURE, ENCODER_NAME
from atelier.tfserving.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from atelier.tfserving.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from services.common.tls import ClientTLS, make_channel

ENCODE_OUTPUTS = ("mu", "sigma", "z")


def to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """float32 array -> TensorProto, without tf.make_tensor_proto's per-call overhead."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_FLOAT,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]
        ),
        tensor_content=array.tobytes(),
    )


def from_tensor_proto(proto: tensor_pb2.TensorProto) -> np.ndarray:
    shape = [d.size for d in proto.tensor_shape.dim]
    if proto.dtype != types_pb2.DT_FLOAT:
        raise ValueError(f"expected a float tensor, got dtype {proto.dtype}")
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np.float32).reshape(shape)
    return np.asarray(proto.float_val, dtype=np.float32).reshape(shape)


@dataclass(frozen=True)
class ModelShape:
    version: int
    image_height: int
    image_width: int
    latent_dim: int


class ModelClient:
    """TLS as `tls` says (None: from the environment, as for every channel of the suite)."""

    def __init__(self, address: str, timeout: float = 30.0, tls: ClientTLS | None = None):
        self.address = address
        self.timeout = timeout
        self.channel = make_channel(address, tls)
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._shapes: dict[tuple[bool, int], ModelShape] = {}

    def close(self) -> None:
        self.channel.close()

    def _deadline(self, remaining: float | None) -> float:
        # A server passes its caller's remaining time on, so a downstream call never outlives it.
        return self.timeout if remaining is None else max(0.001, min(self.timeout, remaining))

    def _predict(
        self,
        name: str,
        signature: str,
        key: str,
        array: np.ndarray,
        version: int | None,
        outputs: tuple[str, ...],
        remaining: float | None,
    ):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = name
        request.model_spec.signature_name = signature
        if version:
            request.model_spec.version.value = version
        request.inputs[key].CopyFrom(to_tensor_proto(array))
        request.output_filter.extend(outputs)
        response = self.stub.Predict(request, timeout=self._deadline(remaining))
        return {
            k: from_tensor_proto(response.outputs[k]) for k in outputs
        }, response.model_spec.version.value

    def encode(
        self, images: np.ndarray, version: int | None = None, remaining: float | None = None
    ) -> tuple[dict[str, np.ndarray], int]:
        """μ, σ and fixed-ε z for images (n, H, W, 3) in [0, 1], and the version that answered."""
        return self._predict(
            ENCODER_NAME, ENCODE_SIGNATURE, "images", images, version, ENCODE_OUTPUTS, remaining
        )

    def decode(
        self, z: np.ndarray, version: int | None = None, remaining: float | None = None
    ) -> tuple[np.ndarray, int]:
        outputs, served = self._predict(
            DECODER_NAME, DECODE_SIGNATURE, "z", z, version, ("images",), remaining
        )
        return outputs["images"], served

    def _signature(self, name: str, signature: str, version: int | None, remaining: float | None):
        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = name
        if version:
            request.model_spec.version.value = version
        request.metadata_field.append("signature_def")
        response = self.stub.GetModelMetadata(request, timeout=self._deadline(remaining))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signature_map)
        return signature_map.signature_def[signature], response.model_spec.version.value

    def shape(
        self, version: int | None = None, remaining: float | None = None, decoder: bool = False
    ) -> ModelShape:
        """Input size and latent dim from the encoder's (or decoder's) signature, via GetModelMetadata.

        A pinned version's shape never changes, so it is asked once; "latest" is always asked.
        """
        key = (decoder, version)
        if version and key in self._shapes:
            return self._shapes[key]
        if decoder:
            signature, served = self._signature(DECODER_NAME, DECODE_SIGNATURE, version, remaining)
            dims = [d.size for d in signature.outputs["images"].tensor_shape.dim]
            latent = [d.size for d in signature.inputs["z"].tensor_shape.dim][-1]
        else:
            signature, served = self._signature(ENCODER_NAME, ENCODE_SIGNATURE, version, remaining)
            dims = [d.size for d in signature.inputs["images"].tensor_shape.dim]
            latent = [d.size for d in signature.outputs["mu"].tensor_shape.dim][-1]
        shape = ModelShape(served, dims[1], dims[2], latent)
        self._shapes[(decoder, served)] = shape
        return shape


def to_png(image: np.ndarray) -> bytes:
    """A decoded image (H, W, 3) in [0, 1] as PNG bytes."""
    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", compress_level=1)  # speed over a few bytes
    return buffer.getvalue()


def status_of(error: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """The status a service returns when the model server fails it: retryable stays retryable,
    NOT_FOUND stays NOT_FOUND, and a rejected request is the service's own fault (INTERNAL)."""
    code = error.code()
    if code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        return code, f"model server: {error.details()}"
    return (
        grpc.StatusCode.INTERNAL,
        f"model server rejected the request: {code.name}: {error.details()}",
    )
