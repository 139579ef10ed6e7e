"""Callers' mistakes are answered as their errors by every gRPC server (services/common/runtime.py
CallerErrors): bytes that do not parse are INVALID_ARGUMENT, not grpc's INTERNAL; a status that
quotes a huge value still arrives; and the model server refuses to allocate for absurd shapes.
Real model server and encoder processes."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from atelier.modelinfo import DECODE_SIGNATURE, DECODER_NAME
from atelier.tfserving.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
from atelier.v1 import encoder_pb2, encoder_pb2_grpc
from services.common.launcher import local_suite
from services.common.model_client import to_tensor_proto

pytestmark = pytest.mark.integration
PREDICT = "/tensorflow.serving.PredictionService/Predict"
METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def suite(tmp_path_factory, models_dir):
    work = tmp_path_factory.mktemp("caller-errors")
    with local_suite(work, models_dir, workers=0) as suite:
        yield suite


def _raw_call(address: str, path: str, payload: bytes) -> grpc.RpcError:
    # No token: the request is parsed before the token is checked, so a malformed one is
    # INVALID_ARGUMENT (never INTERNAL or UNKNOWN) whoever sends it.
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(path)  # bytes in, bytes out
        with pytest.raises(grpc.RpcError) as caught:
            call(payload, timeout=30)
    return caught.value


@pytest.mark.parametrize(
    "payload",
    [b"\xff\xff\xff", b"\x0a\x05ab", b"\x0a\x02\xc3\x28", b"\x0a\xff\xff\xff\xff\x07"],
    ids=["bad tag", "truncated", "bad utf-8", "huge length"],
)
@pytest.mark.parametrize("service", ["MODEL_SERVER_ADDR", "ENCODER_ADDR"])
def test_unparseable_requests_are_invalid_argument(suite, service, payload):
    path = METADATA if service == "MODEL_SERVER_ADDR" else "/atelier.v1.EncoderService/GetJob"
    error = _raw_call(suite.env[service], path, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "malformed request message"


def test_a_status_quoting_a_huge_value_still_arrives(suite):
    with suite.channel("encoder") as channel:
        get_job = encoder_pb2_grpc.EncoderServiceStub(channel).GetJob
        for job_id in ("x" * 100_000, "😀" * 5000):
            with pytest.raises(grpc.RpcError) as caught:
                get_job(encoder_pb2.GetJobRequest(job_id=job_id), timeout=30)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert len(caught.value.details().encode()) <= 1000


def test_a_catalogue_csv_that_cannot_be_read_is_the_callers_error(suite, tiny_csv):
    caller_faults = {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED"}
    with suite.channel("encoder") as channel:
        submit = encoder_pb2_grpc.EncoderServiceStub(channel).SubmitCatalogue
        for csv_path in (tiny_csv.parent, "", tiny_csv.parent / "images" / "1164.jpg", PYPROJECT):
            with pytest.raises(grpc.RpcError) as caught:
                submit(encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path)), timeout=30)
            assert caught.value.code().name in caller_faults, caught.value.details()
            assert "build-system" not in caught.value.details()  # never quotes the file


def _predict(
    suite, rows: int | None = None, dims: list[int] | None = None, dtype: int = 1
) -> grpc.RpcError:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = DECODER_NAME
    request.model_spec.signature_name = DECODE_SIGNATURE
    if dims is None:
        request.inputs["z"].CopyFrom(to_tensor_proto(np.zeros((rows, 16), np.float32)))
    else:  # a declared shape with no values: zeros of that shape if nothing checked it
        tensor = request.inputs["z"]
        tensor.dtype = dtype  # 1: DT_FLOAT
        for size in dims:
            tensor.tensor_shape.dim.add(size=size)
    with grpc.insecure_channel(
        suite.env["MODEL_SERVER_ADDR"],
        options=[("grpc.max_send_message_length", 64 << 20)],
    ) as channel:
        call = channel.unary_unary(
            PREDICT,
            request_serializer=predict_pb2.PredictRequest.SerializeToString,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)
    return caught.value


@pytest.mark.parametrize(
    "dims",
    [[2**40, 16], [1 << 20, 1 << 20], [-1, 16], [1, -5]],
    ids=["rows", "values", "-1", "neg"],
)
def test_the_model_server_refuses_absurd_shapes_before_allocating(suite, dims):
    error = _predict(suite, dims=dims)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'z'" in error.details()


@pytest.mark.parametrize(
    "dtype", [121, 21, 7, 999], ids=["variant_ref", "variant", "string", "none"]
)
def test_the_model_server_refuses_dtypes_the_signatures_do_not_take(suite, dtype):
    # Found by bench/fuzz.py: DT_VARIANT_REF has no numpy type, and make_ndarray raised KeyError.
    error = _predict(suite, dims=[1, 16], dtype=dtype)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DT_FLOAT" in error.details()


def test_the_model_server_caps_rows_per_predict(suite):
    error = _predict(suite, rows=1025)  # MODEL_SERVER_MAX_BATCH defaults to 1024
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1025 rows" in error.details()


def test_good_model_server_calls_still_work(suite):
    with grpc.insecure_channel(suite.env["MODEL_SERVER_ADDR"]) as channel:
        call = channel.unary_unary(
            METADATA,
            request_serializer=get_model_metadata_pb2.GetModelMetadataRequest.SerializeToString,
            response_deserializer=get_model_metadata_pb2.GetModelMetadataResponse.FromString,
        )
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = DECODER_NAME
        assert call(request, timeout=30).model_spec.name == DECODER_NAME
