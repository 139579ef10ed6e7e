"""Property-based fuzzing of every RPC and of the studio gateway, against a real local suite.

    python -m bench.fuzz [--examples 200] [--wire-examples 50] [--http-examples 400] [--seed 0]

Starts Redis, the model server, the encoder, a Celery worker, the decoder, retrieval and
recommender services and the gateway with services/common/launcher.py, encodes the sample
catalogue (data/sample-catalogue) under the committed model and serves it. Then:

- every RPC of every service in atelier/v1 (enumerated from the generated descriptors, so a new
  RPC is fuzzed without touching this file), and of the model server's PredictionService, gets
  `--examples` requests that hypothesis builds from the request's descriptor
  (`message_strategy`): integer edges, NaN/inf and float32 overflow, empty/huge/unicode strings,
  random and real image bytes, repeated fields from empty to thousands of values, nested
  messages, oneofs, unknown enum values, good values (known item ids, categories, latent vectors
  of the right size) mixed in; two in three are instead a good request with one field edited
  (`edited`), so the generated value gets past the other checks. Plus `--wire-examples`
  serialized requests mutated on the wire (truncated, flipped, invalid UTF-8, wrong wire types,
  huge length prefixes);
- the gateway gets `--http-examples` requests over raw sockets: random methods, paths, query
  strings, headers and JSON or binary bodies, each followed on the same connection by a known
  request whose answer shows the connection is still in sync; and as many with malformed
  framing (bad or duplicate Content-Length, chunked bodies, bodies shorter or longer than
  announced, odd methods and request lines, too many headers, garbage);
- before and after, known-good requests to every service (Searches and a Recommend for a known
  item and code, a Decode, a seeded RandomStart, ListCategories, Traverse, an Encode, GetJob,
  every service's health, and the gateway's /healthz, /api/categories and /api/decode) must get
  the same answers, and every process must still run.

`internal_or_unknown` counts gRPC INTERNAL or UNKNOWN and HTTP 500 or 502; `other_failures`
counts gateway answers that leak a traceback, path or address, connections left out of sync or
unanswered, and statuses lost to oversized details. Both must stay 0. Writes the `fuzz` section
of docs/reliability.json and .md. Every call carries `authorization: Bearer <token>` (see
`call_metadata`): the suite's admin token (the launcher makes one), else $ATELIER_TOKEN; gateway
requests send it as an `Authorization` header unless the case draws one of its own. Channels come
from services/common/tls.py `make_channel` (TLS as the suite's TLS_* variables say).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import math
import os
import pkgutil
import random
import socket
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import text_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from PIL import Image

import atelier.v1
from atelier.catalogue import read_catalogue_csv
from atelier.store import CodeStore
from atelier.v1 import (
    common_pb2,
    decoder_pb2,
    decoder_pb2_grpc,
    encoder_pb2,
    encoder_pb2_grpc,
    recommender_pb2,
    recommender_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)
from services.common.launcher import Suite, local_suite
from services.common.runtime import MAX_MESSAGE_BYTES
from services.common.tls import make_channel

log = logging.getLogger("bench.fuzz")
ROOT = Path(__file__).resolve().parents[1]
FAILING_CODES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# Started once a generation is served; personalization is fuzzed without a trained model.
QUERY_SERVICES = ("decoder", "retrieval", "recommender", "personalization")
MAX_RECORDED_FAILURES = 20
MODEL_SERVER_MODULE = "atelier.tfserving.tensorflow_serving.apis.prediction_service_pb2"
ADDRESS_VARS = {"tensorflow.serving.PredictionService": "MODEL_SERVER_ADDR"}


# The token calls carry: set by fuzz_suite to the launcher's (None: $ATELIER_TOKEN).
_suite_token: str | None = None


def use_token(token: str | None) -> None:
    global _suite_token
    _suite_token = token or None


def current_token() -> str | None:
    return _suite_token or os.environ.get("ATELIER_TOKEN") or None


def call_metadata(extra: tuple[tuple[str, str], ...] = ()) -> list[tuple[str, str]]:
    """Metadata for every call: the bearer token (the suite's, else $ATELIER_TOKEN), and extras."""
    token = current_token()
    return ([("authorization", f"Bearer {token}")] if token else []) + list(extra)


def auth_header() -> str:
    """The gateway's Authorization header line (with CRLF), or "" without a token."""
    token = current_token()
    return f"Authorization: Bearer {token}\r\n" if token else ""


# ---------------------------------------------------------------- the RPCs, from the descriptors


@dataclass(frozen=True)
class Rpc:
    service: str  # full name, e.g. atelier.v1.RetrievalService
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.method.name}"

    @property
    def name(self) -> str:
        return f"{self.service.rsplit('.', 1)[-1]}.{self.method.name}"

    @property
    def address_var(self) -> str:
        """The env var with the service's address: EncoderService -> ENCODER_ADDR."""
        if self.service in ADDRESS_VARS:
            return ADDRESS_VARS[self.service]
        return self.service.rsplit(".", 1)[-1].removesuffix("Service").upper() + "_ADDR"

    @property
    def request_class(self) -> type[Message]:
        return GetMessageClass(self.method.input_type)

    @property
    def response_class(self) -> type[Message]:
        return GetMessageClass(self.method.output_type)


def all_rpcs(model_server: bool = True) -> list[Rpc]:
    """Every method of every service in the atelier.v1 package's generated modules, and the
    model server's TensorFlow Serving PredictionService (ours when it is the embedded one)."""
    modules = [
        f"atelier.v1.{m.name}"
        for m in sorted(pkgutil.iter_modules(atelier.v1.__path__), key=lambda m: m.name)
        if m.name.endswith("_pb2")
    ]
    if model_server:
        modules.append(MODEL_SERVER_MODULE)
    found = []
    for name in modules:
        module = importlib.import_module(name)
        for service in module.DESCRIPTOR.services_by_name.values():
            found += [Rpc(service.full_name, method) for method in service.methods]
    return found


# ---------------------------------------------------------------- strategies from descriptors


INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOAT32_MAX = 3.4028234663852886e38
SPECIAL_FLOATS = [
    math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0, -1.0, 5e-324, 1.4e-45,
    FLOAT32_MAX, -FLOAT32_MAX, 1e30, -1e30, 99.9, 100.0, 100.1, 1e-30,
]  # fmt: skip
SPECIAL_STRINGS = [
    "", " ", "\x00", "\x00abc", "\n", "%s%s%n", "{}", "null", "../../../../etc/passwd",
    "/etc/passwd", "C:\\Windows\\win.ini", "file:///etc/passwd", "http://169.254.169.254/",
    "*", "?", "'; DROP TABLE items; --", "\u202egnp.exe", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "😀" * 3, "\ufeff", "\uffff",
    "a" * 256, "0", "-1", "1e400", "NaN",
]  # fmt: skip
HUGE_SIZES = [1024, 65536, 1 << 20, 4 << 20]


def _int_strategy(low: int, high: int, hinted: list[int]) -> st.SearchStrategy[int]:
    edges = [
        low, high, 0, 1, -1, 2, 3, 7, 16, 63, 64, 65, 999, 1000, 1001, 10_000,
        2**31 - 1, -(2**31), 2**31, 2**32 - 1, 2**53, 2**63 - 1, -(2**63),
    ]  # fmt: skip
    edges = sorted({e for e in [*edges, *hinted] if low <= e <= high})
    options = [st.sampled_from(edges), st.integers(low, high), st.integers(max(low, -100), 100)]
    if hinted:
        options.append(st.sampled_from(hinted))
    return st.one_of(options)


def _float_strategy(width: int) -> st.SearchStrategy[float]:
    return st.one_of(
        st.sampled_from(SPECIAL_FLOATS),
        st.floats(width=width),
        st.floats(-5.0, 5.0, width=width),
    )


def _huge_text() -> st.SearchStrategy[str]:
    return st.tuples(
        st.sampled_from(HUGE_SIZES[:3]), st.sampled_from(["x", "é", "😀", "\x00"])
    ).map(lambda pair: pair[1] * (pair[0] // len(pair[1].encode())))


def _huge_bytes() -> st.SearchStrategy[bytes]:
    return st.tuples(st.sampled_from(HUGE_SIZES), st.integers(0, 2**32 - 1)).map(
        lambda pair: random.Random(pair[1]).randbytes(pair[0])
    )


TEXT = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=64)


@dataclass
class Hints:
    """Good values mixed into the generated ones, so calls get past the first validation.

    `values` maps a field's full name (atelier.v1.Query.item_id) or its short name (item_id) to
    values; a full name mapped to [] turns the short name's hints off for that field."""

    latent_dim: int = 16
    values: dict[str, list] = field(default_factory=dict)

    def for_field(self, descriptor: FieldDescriptor) -> list:
        if descriptor.full_name in self.values:
            return self.values[descriptor.full_name]
        return self.values.get(descriptor.name, [])


def _scalar_strategy(
    descriptor: FieldDescriptor, hints: Hints, small: bool = False
) -> st.SearchStrategy:
    """One value of a scalar field; `small` leaves out the huge strings and bytes (for the
    elements of long repeated fields, which would otherwise pass the message size limit)."""
    hinted = hints.for_field(descriptor)
    kind = descriptor.type
    if kind in INT_RANGES:
        return _int_strategy(*INT_RANGES[kind], [h for h in hinted if isinstance(h, int)])
    if kind == FieldDescriptor.TYPE_FLOAT:
        return _float_strategy(32)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return _float_strategy(64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in descriptor.enum_type.values]
        return st.one_of(
            st.sampled_from(known),
            st.sampled_from([max(known) + 1, -1, 2**31 - 1, -(2**31)]),
            st.integers(-(2**31), 2**31 - 1),
        )
    if kind == FieldDescriptor.TYPE_STRING:
        options = [TEXT, st.sampled_from(SPECIAL_STRINGS)] + ([] if small else [_huge_text()])
        if hinted:
            options += [st.sampled_from(hinted)] * 3
        return st.one_of(options)
    if kind == FieldDescriptor.TYPE_BYTES:
        options = [st.binary(max_size=256), st.just(b"")] + ([] if small else [_huge_bytes()])
        if hinted:
            options += [st.sampled_from(hinted)] * 3
        return st.one_of(options)
    raise TypeError(f"no strategy for field {descriptor.full_name} of type {kind}")


def _float_lists(descriptor: FieldDescriptor, hints: Hints) -> st.SearchStrategy[list[float]]:
    """Repeated floats: latent-sized vectors (good, or with one bad value) and any length."""
    width = 32 if descriptor.type == FieldDescriptor.TYPE_FLOAT else 64
    element = _float_strategy(width)
    dim = hints.latent_dim
    good = st.lists(st.floats(-3.0, 3.0, width=width), min_size=dim, max_size=dim)
    one_bad = st.tuples(good, st.integers(0, dim - 1), element).map(
        lambda t: [*t[0][: t[1]], t[2], *t[0][t[1] + 1 :]]
    )
    return st.one_of(
        good,
        good,
        one_bad,
        st.lists(element, max_size=2 * dim + 2),
        st.tuples(st.sampled_from([dim - 1, dim + 1, 1000, 100_000]), element).map(
            lambda t: [t[1]] * t[0]
        ),
    )


def _repeated_strategy(
    descriptor: FieldDescriptor, hints: Hints, depth: int
) -> st.SearchStrategy[list]:
    if descriptor.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return _float_lists(descriptor, hints)
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        element = message_strategy(descriptor.message_type, hints, depth + 1, small=True)
        if depth >= 1:  # nested repeated messages (TensorProto in TensorProto): keep them few
            return st.lists(element, max_size=2)
        return st.one_of(
            st.lists(element, max_size=4),
            st.tuples(st.sampled_from([63, 64, 65, 200]), element).map(lambda t: [t[1]] * t[0]),
        )
    element = _scalar_strategy(descriptor, hints, small=True)
    return st.one_of(
        st.lists(element, max_size=6),
        st.tuples(st.sampled_from([100, 1000, 10_000]), element).map(lambda t: [t[1]] * t[0]),
    )


def _field_strategy(
    descriptor: FieldDescriptor, hints: Hints, depth: int, small: bool
) -> st.SearchStrategy:
    if descriptor.message_type is not None and descriptor.message_type.GetOptions().map_entry:
        entry = descriptor.message_type
        key = _scalar_strategy(entry.fields_by_name["key"], hints, small=True)
        value = _field_strategy(entry.fields_by_name["value"], hints, depth + 1, small=True)
        return st.dictionaries(key, value, max_size=4)
    if descriptor.is_repeated:
        return _repeated_strategy(descriptor, hints, depth)
    if descriptor.type == FieldDescriptor.TYPE_MESSAGE:
        return message_strategy(descriptor.message_type, hints, depth + 1, small)
    return _scalar_strategy(descriptor, hints, small)


def _assign(message: Message, descriptor: FieldDescriptor, value: Any) -> None:
    target = getattr(message, descriptor.name)
    if isinstance(value, dict):  # a map field
        for key, item in value.items():
            if isinstance(item, Message):
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif descriptor.is_repeated:
        target.extend(value)
    elif isinstance(value, Message):
        target.CopyFrom(value)
    else:
        setattr(message, descriptor.name, value)


MAX_DEPTH = 4
MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES // 2


def message_strategy(
    descriptor: Descriptor, hints: Hints | None = None, depth: int = 0, small: bool = False
) -> st.SearchStrategy[Message]:
    """Messages of one type: each field set or not, at most one member of each oneof; below
    MAX_REQUEST_BYTES serialized."""
    hints = hints or Hints()
    cls = GetMessageClass(descriptor)
    if depth > MAX_DEPTH:
        return st.just(cls())
    # A proto3 `optional` field sits alone in a synthetic oneof: it is an ordinary field here.
    oneofs = [o for o in descriptor.oneofs if len(o.fields) > 1 or o.name != f"_{o.fields[0].name}"]
    in_oneof = {f.full_name for o in oneofs for f in o.fields}
    plain = [f for f in descriptor.fields if f.full_name not in in_oneof]

    @st.composite
    def build(draw) -> Message:
        message = cls()
        chosen = [draw(st.sampled_from([None, *o.fields])) for o in oneofs]
        for descriptor_ in plain + [c for c in chosen if c is not None]:
            if descriptor_ in plain and not draw(st.booleans()):
                continue
            value = draw(_field_strategy(descriptor_, hints, depth, small))
            _assign(message, descriptor_, value)
        return message

    if depth == 0:
        return build().filter(lambda message: message.ByteSize() <= MAX_REQUEST_BYTES)
    return build()


@st.composite
def edited(draw, good: Message, hints: Hints, depth: int = 0) -> Message:
    """A good request with one field, possibly nested, cleared or replaced by a generated
    value: most checks pass, so the generated value reaches the code behind them."""
    message = type(good)()
    message.CopyFrom(good)
    fields = list(message.DESCRIPTOR.fields)
    if not fields:
        return message
    target = draw(st.sampled_from(fields))
    nested = (
        target.type == FieldDescriptor.TYPE_MESSAGE
        and not target.is_repeated
        and depth < 2
        and draw(st.booleans())
    )
    if nested:
        inner = draw(edited(getattr(message, target.name), hints, depth + 1))
        getattr(message, target.name).CopyFrom(inner)
        return message
    message.ClearField(target.name)
    if draw(st.integers(0, 4)):
        _assign(message, target, draw(_field_strategy(target, hints, depth, False)))
    return message


def request_strategy(
    descriptor: Descriptor, hints: Hints, good: list[Message]
) -> st.SearchStrategy[Message]:
    """Two in three requests are good ones edited in one place, one in three entirely generated."""
    generated = message_strategy(descriptor, hints)
    if not good:
        return generated
    one_edit = st.sampled_from(good).flatmap(lambda request: edited(request, hints))
    return st.one_of(one_edit, one_edit, generated).filter(
        lambda message: message.ByteSize() <= MAX_REQUEST_BYTES
    )


# ---------------------------------------------------------------- mutations on the wire


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


@st.composite
def _mutation(draw, descriptor: Descriptor) -> tuple[str, Any]:
    numbers = [f.number for f in descriptor.fields] or [1]
    strings = [f.number for f in descriptor.fields if f.type == FieldDescriptor.TYPE_STRING]
    kinds = ["truncate", "flip", "insert", "unknown_field", "wrong_wire_type", "huge_length"]
    kinds += ["bad_utf8"] if strings else []
    kind = draw(st.sampled_from(kinds))
    if kind == "bad_utf8":
        return kind, draw(st.sampled_from(strings))
    if kind in ("unknown_field", "wrong_wire_type", "huge_length"):
        number = draw(st.sampled_from(numbers)) if kind != "unknown_field" else None
        number = number or draw(st.integers(max(numbers) + 1, 2**29 - 1))
        return kind, (number, draw(st.integers(0, 7)), draw(st.binary(max_size=16)))
    return kind, (draw(st.integers(0, 2**31)), draw(st.binary(min_size=1, max_size=16)))


def mutate(serialized: bytes, mutation: tuple[str, Any]) -> bytes:
    """A serialized message with one wire-level defect."""
    kind, arg = mutation
    if kind == "bad_utf8":
        bad = b"\xc3\x28\xff\xfe"
        return serialized + _tag(arg, 2) + _varint(len(bad)) + bad
    if kind in ("unknown_field", "wrong_wire_type"):
        number, wire_type, junk = arg
        return serialized + _tag(number, wire_type) + junk
    if kind == "huge_length":
        number, _, junk = arg
        return serialized + _tag(number, 2) + _varint(2**31 - 1) + junk
    position, junk = arg
    if not serialized:
        return junk
    index = position % len(serialized)
    if kind == "truncate":
        return serialized[:index]
    if kind == "flip":
        return serialized[:index] + bytes([serialized[index] ^ junk[0]]) + serialized[index + 1 :]
    return serialized[:index] + junk + serialized[index:]


# ---------------------------------------------------------------- the suite and its known answers


@dataclass
class Facts:
    """What the fuzzer knows about the running suite: good values and known-good requests."""

    latent_dim: int
    item_ids: list[str]
    categories: list[str]
    image: bytes
    bootstrap_job: str
    fuzz_job: str
    code: list[float]
    token: str = ""  # sent to the gateway as "Authorization: Bearer" unless a case has its own

    def _model_server_requests(self) -> dict[str, list[Message]]:
        from atelier.modelinfo import DECODE_SIGNATURE, DECODER_NAME, ENCODER_NAME
        from atelier.tfserving.tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2
        from services.common.model_client import to_tensor_proto

        predict = predict_pb2.PredictRequest()
        predict.model_spec.name = DECODER_NAME
        predict.model_spec.signature_name = DECODE_SIGNATURE
        predict.inputs["z"].CopyFrom(to_tensor_proto(np.asarray([self.code], np.float32)))
        predict.output_filter.append("images")
        metadata = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata.model_spec.name = ENCODER_NAME
        return {
            "PredictionService.Predict": [predict],
            "PredictionService.GetModelMetadata": [metadata],
        }

    def good_requests(self) -> dict[str, list[Message]]:
        """Requests each RPC answers, by Rpc.name; fuzzing edits them one field at a time."""
        code = common_pb2.LatentVector(values=self.code)
        item = common_pb2.Query(item_id=self.item_ids[0])
        category = self.categories[0]
        return {
            "DecoderService.Decode": [decoder_pb2.DecodeRequest(codes=[code, code])],
            "DecoderService.RandomStart": [
                decoder_pb2.RandomStartRequest(category=category, seed=1)
            ],
            "DecoderService.Traverse": [
                decoder_pb2.TraverseRequest(start=code, dimension=1, low=-1, high=1, steps=3)
            ],
            "EncoderService.Encode": [encoder_pb2.EncodeRequest(image=self.image)],
            **self._model_server_requests(),
            "EncoderService.SubmitCatalogue": [
                encoder_pb2.SubmitCatalogueRequest(
                    entries=encoder_pb2.CatalogueEntries(
                        entries=[
                            encoder_pb2.CatalogueEntry(
                                item=common_pb2.Item(item_id="fuzz-new", sub_category=category),
                                image=b"not an image",
                            )
                        ]
                    )
                )
            ],
            "EncoderService.GetJob": [
                encoder_pb2.GetJobRequest(job_id=self.fuzz_job, max_failures=5)
            ],
            "EncoderService.CancelJob": [encoder_pb2.CancelJobRequest(job_id=self.fuzz_job)],
            "RecommenderService.Recommend": [
                recommender_pb2.RecommendRequest(query=item, k=5),
                recommender_pb2.RecommendRequest(
                    query=common_pb2.Query(vector=code),
                    k=3,
                    method=common_pb2.RANKING_METHOD_LOGLIK,
                    partition=recommender_pb2.PARTITION_KMEANS,
                    gender="Women",
                ),
            ],
            "RetrievalService.Search": [
                retrieval_pb2.SearchRequest(query=item, k=5),
                retrieval_pb2.SearchRequest(
                    query=common_pb2.Query(vector=code),
                    k=5,
                    scope=retrieval_pb2.SEARCH_SCOPE_CLUSTER,
                    nprobe=2,
                    method=common_pb2.RANKING_METHOD_COSINE,
                    category=category,
                ),
            ],
        }

    def hints(self) -> Hints:
        truncated = self.image[: len(self.image) // 2]
        return Hints(
            self.latent_dim,
            {
                "item_id": self.item_ids,
                "category": self.categories,
                "sub_category": self.categories,
                "target_categories": self.categories,
                "gender": ["Men", "Women", "Unisex", "Boys", "Girls"],
                "job_id": [self.fuzz_job],
                "model_version": [0, 1, 2],
                "k": [1, 5, 10, 1000, 1001],
                "steps": [2, 3, 32, 33],
                "dimension": [0, self.latent_dim - 1, self.latent_dim],
                "nprobe": [0, 1, 2, 16, 17],
                "max_failures": [0, 1, 10, 10_000],
                "image": [self.image, truncated],
                # Real photos submitted for encoding would join the served generation and change
                # the known answers; submitted entries get only generated bytes.
                "atelier.v1.CatalogueEntry.image": [],
                "csv_path": ["", "styles.csv", "/etc/passwd", str(ROOT / "pyproject.toml")],
                # The model server's requests.
                "tensorflow.serving.ModelSpec.name": ["atelier_encoder", "atelier_decoder"],
                "signature_name": ["encode", "decode", "serving_default", "__saved_model_init_op"],
                "tensorflow.serving.PredictRequest.InputsEntry.key": ["images", "z"],
                "output_filter": ["mu", "sigma", "z", "images"],
                "metadata_field": ["signature_def"],
                "size": [0, 1, 3, 64, 80, self.latent_dim, 1024, 1025, -1],
            },
        )


def _wait_job(stub: encoder_pb2_grpc.EncoderServiceStub, job_id: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    finished = (
        common_pb2.JOB_STATE_SUCCEEDED,
        common_pb2.JOB_STATE_FAILED,  # the small job's items all fail (they are not images)
        common_pb2.JOB_STATE_CANCELLED,
    )
    while True:
        job = stub.GetJob(
            encoder_pb2.GetJobRequest(job_id=job_id), timeout=10, metadata=call_metadata()
        )
        if job.state in finished:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id}: {job.done + job.failed}/{job.total} after {timeout}s"
            )
        time.sleep(0.3)


@contextmanager
def fuzz_suite(
    work: Path, models: Path, catalogue: Path, read_timeout: float = 2.0
) -> Iterator[tuple[Suite, Facts]]:
    """The whole suite with `catalogue` encoded and served, and the facts the fuzzer needs."""
    items = read_catalogue_csv(catalogue)
    env = {
        "GATEWAY_IMAGE_ROOT": str(catalogue.resolve().parent),
        "GATEWAY_READ_TIMEOUT_SECONDS": str(read_timeout),
        "KMEANS_K": "4",
    }
    with local_suite(work, models, workers=1, extra_env=env) as suite:
        use_token(suite.token)
        suite.stack.callback(use_token, None)
        with make_channel(suite.env["ENCODER_ADDR"], suite.client_tls()) as channel:
            stub = encoder_pb2_grpc.EncoderServiceStub(channel)
            job = stub.SubmitCatalogue(
                encoder_pb2.SubmitCatalogueRequest(csv_path=str(catalogue.resolve())),
                timeout=120,
                metadata=call_metadata(),
            )
            _wait_job(stub, job.job_id, 900)
            # A small job of its own for GetJob and CancelJob to find.
            small = stub.SubmitCatalogue(
                encoder_pb2.SubmitCatalogueRequest(
                    entries=encoder_pb2.CatalogueEntries(
                        entries=[
                            encoder_pb2.CatalogueEntry(
                                item=common_pb2.Item(item_id=f"fuzz-{i}"), image=b"not an image"
                            )
                            for i in range(3)
                        ]
                    )
                ),
                timeout=60,
                metadata=call_metadata(),
            )
            _wait_job(stub, small.job_id, 120)
        store = CodeStore.from_url(suite.env["REDIS_URL"])
        store.serve(job.model_version)
        for name in QUERY_SERVICES:
            suite.start_service(name, timeout=600)
        suite.start_gateway(timeout=120)
        matrix = store.load_codes(job.model_version)
        served = [i for i in items if i.item_id in set(matrix.item_ids)]
        row = matrix.item_ids.index(served[0].item_id)
        facts = Facts(
            latent_dim=int(matrix.mu.shape[1]),
            item_ids=[i.item_id for i in served[:50]],
            categories=sorted(
                {i.sub_category for i in served} | {i.master_category for i in served}
            ),
            image=served[0].image_path.read_bytes(),
            bootstrap_job=job.job_id,
            fuzz_job=small.job_id,
            code=[float(v) for v in matrix.mu[row]],
            token=suite.token or "",
        )
        yield suite, facts


class Clients:
    """Long-lived channels to every service, one per address."""

    def __init__(self, suite: Suite):
        self.env = suite.env
        self.tls = suite.client_tls()
        self.channels: dict[str, grpc.Channel] = {}

    def channel(self, address_var: str) -> grpc.Channel:
        address = self.env[address_var]
        if address not in self.channels:
            self.channels[address] = make_channel(
                address,
                self.tls,
                options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ],
            )
        return self.channels[address]

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32)


def snapshot(clients: Clients, suite: Suite, facts: Facts) -> dict[str, Any]:
    """Answers to known-good requests; equal before and after fuzzing when nothing broke."""
    md = call_metadata()
    retrieval = retrieval_pb2_grpc.RetrievalServiceStub(clients.channel("RETRIEVAL_ADDR"))
    recommender = recommender_pb2_grpc.RecommenderServiceStub(clients.channel("RECOMMENDER_ADDR"))
    decoder = decoder_pb2_grpc.DecoderServiceStub(clients.channel("DECODER_ADDR"))
    encoder = encoder_pb2_grpc.EncoderServiceStub(clients.channel("ENCODER_ADDR"))
    item = common_pb2.Query(item_id=facts.item_ids[0])
    vector = common_pb2.Query(vector=common_pb2.LatentVector(values=facts.code))
    answers: dict[str, Any] = {}
    for scope in (retrieval_pb2.SEARCH_SCOPE_CATALOGUE, retrieval_pb2.SEARCH_SCOPE_SUB_CATEGORY):
        for method in (common_pb2.RANKING_METHOD_FIXED_EPS, common_pb2.RANKING_METHOD_LOGLIK):
            reply = retrieval.Search(
                retrieval_pb2.SearchRequest(query=item, k=10, scope=scope, method=method),
                timeout=30,
                metadata=md,
            )
            answers[f"search.{scope}.{method}"] = [r.item.item_id for r in reply.results]
    reply = retrieval.Search(
        retrieval_pb2.SearchRequest(query=vector, k=5), timeout=30, metadata=md
    )
    answers["search.vector"] = [r.item.item_id for r in reply.results]
    reply = recommender.Recommend(
        recommender_pb2.RecommendRequest(query=item, k=5), timeout=30, metadata=md
    )
    answers["recommend"] = (
        [s.item.item_id for s in reply.similar.items],
        [(p.partition, [s.item.item_id for s in p.items]) for p in reply.pairings],
    )
    reply = decoder.Decode(
        decoder_pb2.DecodeRequest(codes=[common_pb2.LatentVector(values=facts.code)]),
        timeout=30,
        metadata=md,
    )
    answers["decode"] = _pixels(reply.png[0])
    start = decoder.RandomStart(decoder_pb2.RandomStartRequest(seed=7), timeout=30, metadata=md)
    answers["random_start"] = (start.item.item_id, list(start.sliders.labels))
    listed = decoder.ListCategories(decoder_pb2.ListCategoriesRequest(), timeout=30, metadata=md)
    answers["categories"] = [
        (c.sub_category, c.master_category, c.items) for c in listed.categories
    ]
    strip = decoder.Traverse(
        decoder_pb2.TraverseRequest(
            start=common_pb2.LatentVector(values=facts.code), dimension=0, low=-1, high=1, steps=3
        ),
        timeout=30,
        metadata=md,
    )
    answers["traverse"] = np.stack([_pixels(png) for png in strip.png])
    encoded = encoder.Encode(encoder_pb2.EncodeRequest(image=facts.image), timeout=30, metadata=md)
    answers["encode"] = np.asarray(encoded.code.mu)
    job = encoder.GetJob(
        encoder_pb2.GetJobRequest(job_id=facts.bootstrap_job), timeout=30, metadata=md
    )
    answers["job"] = (job.state, job.total, job.done, job.failed)
    for name in (
        "MODEL_SERVER_ADDR",
        "ENCODER_ADDR",
        *(f"{n.upper()}_ADDR" for n in QUERY_SERVICES),
    ):
        health = health_pb2_grpc.HealthStub(clients.channel(name)).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        answers[f"health.{name}"] = health.status
    gateway = suite.env["GATEWAY_ADDR"]
    status, _, body = http_request(gateway, b"GET /healthz HTTP/1.1\r\nHost: f\r\n\r\n")
    answers["gateway.healthz"] = (status, json.loads(body))
    categories = f"GET /api/categories HTTP/1.1\r\nHost: f\r\n{auth_header()}\r\n".encode()
    status, _, body = http_request(gateway, categories)
    answers["gateway.categories"] = (status, json.loads(body))
    payload = json.dumps({"code": facts.code}).encode()
    status, _, body = http_request(gateway, _post("/api/decode", payload, auth_header()))
    answers["gateway.decode"] = (status, _pixels(body) if status == 200 else body)
    answers["processes"] = sorted(
        name for name, managed in suite.processes.items() if managed.process.poll() is None
    )
    return answers


def same(before: Any, after: Any) -> bool:
    if isinstance(before, np.ndarray) or isinstance(after, np.ndarray):
        return (
            isinstance(before, np.ndarray)
            and isinstance(after, np.ndarray)
            and before.shape == after.shape
            and bool(np.allclose(before, after, atol=2.0, rtol=1e-3))
        )
    if isinstance(before, tuple | list) and isinstance(after, tuple | list):
        return len(before) == len(after) and all(map(same, before, after))
    return before == after


# ---------------------------------------------------------------- gRPC fuzzing


@dataclass
class Tally:
    """Status codes per target, and the first few failing cases."""

    codes: dict[str, Counter] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    failed: Counter = field(default_factory=Counter)  # "internal" or "other" -> cases

    def count(
        self, target: str, outcome: str, failure: str | None, case: str, detail: str = ""
    ) -> None:
        """One case's outcome; `failure` is "internal" (INTERNAL/UNKNOWN, HTTP 500/502),
        "other" (a leak, a desynchronised or unanswered connection, oversized details) or None."""
        self.codes.setdefault(target, Counter())[outcome] += 1
        if failure:
            self.failed[failure] += 1
            if len(self.failures) < MAX_RECORDED_FAILURES:
                self.failures.append(
                    {"target": target, "outcome": outcome, "detail": detail[:300], "case": case}
                )
            log.error("%s -> %s %s\n  case: %s", target, outcome, detail[:300], case[:600])

    @property
    def cases(self) -> int:
        return sum(sum(c.values()) for c in self.codes.values())


def _describe(message: Message) -> str:
    text = text_format.MessageToString(message, as_one_line=True)
    return text if len(text) < 600 else text[:600] + f"... ({message.ByteSize()} bytes)"


def _call(
    channel: grpc.Channel, rpc: Rpc, request: Any, timeout: float, metadata
) -> tuple[grpc.StatusCode, str]:
    """One call, whatever the method's streaming kind; `request` is a message or raw bytes."""
    raw = isinstance(request, bytes)
    serialize = None if raw else rpc.request_class.SerializeToString
    deserialize = rpc.response_class.FromString
    kind = (rpc.method.client_streaming, rpc.method.server_streaming)
    factory = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[kind]
    call = factory(rpc.path, request_serializer=serialize, response_deserializer=deserialize)
    argument = iter([request, request]) if rpc.method.client_streaming else request
    try:
        result = call(argument, timeout=timeout, metadata=metadata)
        if rpc.method.server_streaming:
            for _ in result:
                pass
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""


def _failure(code: grpc.StatusCode, details: str) -> str | None:
    if code in FAILING_CODES:
        return "internal"
    # The client refuses trailers over its size limit: the service's own status was lost.
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "metadata" in details:
        return "other"
    return None


EXTRA_METADATA = st.lists(
    st.tuples(
        st.sampled_from(["x-fuzz", "x-request-id", "x-client-note"]),
        st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
    ),
    max_size=2,
)


def fuzz_rpc(
    clients: Clients,
    rpc: Rpc,
    hints: Hints,
    good: list[Message],
    tally: Tally,
    examples: int,
    wire_examples: int,
    timeout: float,
    seed_value: int,
) -> None:
    channel = clients.channel(rpc.address_var)
    requests = request_strategy(rpc.method.input_type, hints, good)
    config = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )

    @seed(seed_value)
    @config
    @given(requests, EXTRA_METADATA)
    def structured(request: Message, extra) -> None:
        code, details = _call(channel, rpc, request, timeout, call_metadata(tuple(extra)))
        tally.count(rpc.name, code.name, _failure(code, details), _describe(request), details)

    @seed(seed_value)
    @settings(config, max_examples=wire_examples)
    @given(requests, _mutation(rpc.method.input_type))
    def wire(request: Message, mutation) -> None:
        payload = mutate(request.SerializeToString(), mutation)
        code, details = _call(channel, rpc, payload, timeout, call_metadata())
        case = f"{mutation[0]} of {_describe(request)} -> {payload[:200]!r}"
        tally.count(f"{rpc.name} (wire)", code.name, _failure(code, details), case, details)

    if examples:
        structured()
    if wire_examples:
        wire()


# ---------------------------------------------------------------- HTTP fuzzing


def _post(path: str, body: bytes, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: f\r\nContent-Length: {len(body)}\r\n{headers}\r\n".encode()
        + body
    )


class HttpReader:
    """Reads HTTP/1.1 responses off a socket; None when the server closed before answering."""

    def __init__(self, sock: socket.socket):
        self.reader = sock.makefile("rb")

    def read(self, method: str = "GET") -> tuple[int, dict[str, str], bytes] | None:
        status_line = self.reader.readline(65537)
        if not status_line:
            return None
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise ValueError(f"malformed status line {status_line[:80]!r}")
        headers: dict[str, str] = {}
        while (line := self.reader.readline(65537)) not in (b"\r\n", b"\n"):
            if not line:
                raise ValueError("connection closed inside the headers")
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        length = (
            0 if method == "HEAD" or status in (204, 304) else int(headers.get("content-length", 0))
        )
        body = self.reader.read(length)
        if len(body) != length:
            raise ValueError("connection closed inside the body")
        return status, headers, body


def http_request(address: str, raw: bytes, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(raw)
        answer = HttpReader(sock).read()
    if answer is None:
        raise ConnectionError(f"no answer from {address}")
    return answer


SENTINEL = b"GET /index.html HTTP/1.1\r\nHost: f\r\n\r\n"
LEAKS = (b"Traceback", b'File "', b"ipv4:", b"127.0.0.1", b"/work/", b"site-packages")
GET_PATHS = ["/", "/index.html", "/healthz", "/api/categories", "/api/start", "/api/image/"]
POST_PATHS = ["/api/encode", "/api/decode", "/api/recommend"]
METHODS = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE", "CONNECT", "BREW"]
URL_SAFE = st.characters(min_codepoint=0x21, max_codepoint=0x7E)


def _json_values() -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats()
        | TEXT
        | st.sampled_from(SPECIAL_STRINGS)
    )
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=5) | st.dictionaries(TEXT, children, max_size=5)
        ),
        max_leaves=20,
    )


def _api_body(facts: Facts) -> st.SearchStrategy[bytes]:
    value = _json_values()
    code = st.lists(st.floats(-3, 3), min_size=facts.latent_dim, max_size=facts.latent_dim)
    fields = {
        "code": st.one_of(code, code, value, _float_lists_json(facts.latent_dim)),
        "method": st.one_of(st.sampled_from(["loglik", "fixed_eps", "cosine", "x"]), value),
        "k": st.one_of(st.integers(-5, 1005), value),
        "gender": st.one_of(st.sampled_from(["Men", "Women", ""]), value),
        "match_gender": st.one_of(st.booleans(), value),
    }
    objects = st.fixed_dictionaries({}, optional=fields).map(
        lambda obj: json.dumps(obj, allow_nan=True).encode()
    )
    raw_texts = st.sampled_from(
        [
            b'{"k": 1e400}', b'{"code": [1e400]}', b"[]", b"[1]", b'"x"', b"1", b"null", b"",
            b"{", b'{"code": [NaN]}', b'{"code": Infinity}', b"[" * 100_000, b"{}" * 3,
            b'{"code": [' + b"9" * 5000 + b"]}", b"\xff\xfe", b'{"a":1,"a":2}', b"\x00",
        ]
    )  # fmt: skip
    return st.one_of(
        objects,
        objects,
        value.map(lambda v: json.dumps(v, allow_nan=True).encode()),
        raw_texts,
        st.binary(max_size=512),
        st.just(facts.image),
    )


def _float_lists_json(dim: int) -> st.SearchStrategy[list]:
    return st.lists(st.floats(), min_size=0, max_size=2 * dim)


def _path(facts: Facts) -> st.SearchStrategy[str]:
    segment = st.text(alphabet=URL_SAFE, max_size=20).map(lambda s: s.replace("?", "%3F"))
    query = st.lists(
        st.tuples(st.sampled_from(["category", "x", "category", ""]), segment), max_size=3
    ).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
    known = st.sampled_from(GET_PATHS + POST_PATHS)
    return st.one_of(
        known,
        known,
        st.tuples(known, query).map(lambda t: f"{t[0]}?{t[1]}"),
        st.tuples(st.sampled_from(["/api/start?category=", "/api/image/"]), segment).map("".join),
        st.sampled_from(
            [f"/api/start?category={c}" for c in facts.categories[:5]]
            + [f"/api/image/{i}" for i in facts.item_ids[:5]]
            + [
                "/api/image/..%2F..%2Fpyproject.toml",
                "/api/image/%00",
                "//",
                "*",
                "/%",
                "/api/start?category=%ff%fe",
                "/api/start?" + "a=1&" * 30,
                "http://x/healthz",
                "/api/image/" + "a" * 5000,
            ]
        ),
        segment.map(lambda s: "/" + s),
    )


HEADER_LINES = st.sampled_from(
    [
        "Content-Type: application/json", "Content-Type: text/plain", "Accept: */*",
        "Connection: keep-alive", "Expect: 100-continue", "Authorization: Bearer x",
        "Authorization: Basic Zm9vOmJhcg==", "X-Request-Id: \x7f", "Cookie: a=b",
        "Range: bytes=0-1", "If-None-Match: *", "Accept-Encoding: gzip", "Upgrade: h2c",
        " folded-continuation", "X-Long: " + "v" * 8000, "Content-Encoding: gzip",
    ]
)  # fmt: skip


@st.composite
def framed_request(draw, facts: Facts) -> tuple[bytes, str]:
    """A request whose Content-Length is right, so the sentinel after it must be answered."""
    method = draw(st.sampled_from(["GET", "GET", "POST", "POST", "PUT", "DELETE", "HEAD"]))
    own = {"GET": GET_PATHS, "POST": POST_PATHS}.get(method)
    path = draw(st.sampled_from(own)) if own and draw(st.booleans()) else draw(_path(facts))
    body = draw(_api_body(facts)) if method != "GET" or draw(st.booleans()) else b""
    headers = draw(st.lists(HEADER_LINES, max_size=3, unique=True))
    headers = [h for h in headers if not h.startswith((" ", "Expect", "Connection"))]
    if facts.token and not any(h.startswith("Authorization") for h in headers):
        headers.append(f"Authorization: Bearer {facts.token}")
    lines = [f"{method} {path} HTTP/1.1", "Host: f", *headers, f"Content-Length: {len(body)}"]
    return "\r\n".join(lines).encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body, method


@st.composite
def misframed_request(draw, facts: Facts) -> bytes:
    """Requests with broken framing: only a well-formed non-5xx answer, or a close, is right."""
    path = draw(st.sampled_from(POST_PATHS + GET_PATHS))
    body = draw(_api_body(facts))
    length = draw(
        st.one_of(
            st.sampled_from(["-1", "+5", "abc", "1e3", "0x10", "١٢", "", " ", "5 5", "99999999999999999999999"]),
            st.integers(0, 2 * len(body) + 10).map(str),
            st.integers(2**20, 2**64).map(str),
        )
    )  # fmt: skip
    kinds = ["length", "double", "chunked", "both", "headers", "raw", "line", "method"]
    kind = draw(st.sampled_from(kinds))
    auth = f"Authorization: Bearer {facts.token}\r\n" if facts.token else ""
    head = f"POST {path} HTTP/1.1\r\nHost: f\r\n{auth}"
    if kind == "method":
        method = draw(st.sampled_from(METHODS))
        return (
            f"{method} {path} HTTP/1.1\r\nHost: f\r\n{auth}Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    if kind == "length":
        return f"{head}Content-Length: {length}\r\n\r\n".encode() + body
    if kind == "double":
        return (
            f"{head}Content-Length: {len(body)}\r\nContent-Length: {length}\r\n\r\n".encode() + body
        )
    if kind in ("chunked", "both"):
        extra = f"Content-Length: {length}\r\n" if kind == "both" else ""
        chunk = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
        return f"{head}Transfer-Encoding: chunked\r\n{extra}\r\n".encode() + chunk
    if kind == "headers":
        many = draw(st.sampled_from([50, 101, 200]))
        lines = "".join(f"X-{i}: {'v' * draw(st.sampled_from([1, 1000]))}\r\n" for i in range(many))
        return f"{head}{lines}Content-Length: {len(body)}\r\n\r\n".encode() + body
    if kind == "line":
        line = draw(
            st.sampled_from(
                [
                    "GET / HTTP/9.9", "GET /", "GET / HTTP/1.1 extra", "GET\x00/ HTTP/1.1",
                    "get / http/1.1", "GET " + "/a" * 40_000 + " HTTP/1.1", "\r\nGET / HTTP/1.1",
                    "GET / HTTP/1.0", "POST /api/decode HTTP/0.9", "PRI * HTTP/2.0",
                ]
            )
        )  # fmt: skip
        return f"{line}\r\nHost: f\r\n\r\n".encode("utf-8", "surrogateescape")
    return draw(st.binary(max_size=1024))


def _classify(answer, request: bytes) -> tuple[str, str | None, str]:
    """An HTTP answer's outcome and failure kind: 500/502 are internal; a 4xx/5xx body that
    names a traceback, a file or an address (not quoted from the request) leaks internals."""
    status, _, body = answer
    if status in (500, 502):
        return str(status), "internal", body[:200].decode("utf-8", "replace")
    if status >= 400 and any(m in body and m not in request for m in LEAKS):
        return f"{status} leak", "other", body[:300].decode("utf-8", "replace")
    return str(status), None, ""


def fuzz_http(
    address: str, facts: Facts, tally: Tally, examples: int, seed_value: int, timeout: float
) -> None:
    host, port = address.rsplit(":", 1)
    config = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=(Phase.generate,),
        suppress_health_check=list(HealthCheck),
    )

    def connect() -> socket.socket:
        return socket.create_connection((host, int(port)), timeout=timeout)

    @seed(seed_value)
    @config
    @given(framed_request(facts))
    def framed(case) -> None:
        raw, method = case
        described = repr(raw[:300])
        with connect() as sock:
            try:
                sock.sendall(raw + SENTINEL)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may answer and close before reading it all: read the answer
            reader = HttpReader(sock)
            try:
                answer = reader.read(method)
            except (ValueError, OSError) as exc:
                tally.count("gateway (framed)", "malformed answer", "other", described, str(exc))
                return
            if answer is None:
                tally.count("gateway (framed)", "no answer", "other", described)
                return
            outcome, failure, detail = _classify(answer, raw)
            tally.count("gateway (framed)", outcome, failure, described, detail)
            if answer[1].get("connection", "").lower() == "close":
                return  # the server said it would close: nothing more to check
            try:
                follow = reader.read()
            except (ValueError, OSError) as exc:
                follow, detail = None, str(exc)
            in_sync = follow is not None and follow[0] == 200 and b"<html" in follow[2].lower()
            if not in_sync:
                tally.count("gateway (sync)", "out of sync", "other", described, repr(follow))

    @seed(seed_value)
    @config
    @given(misframed_request(facts))
    def misframed(raw: bytes) -> None:
        described = repr(raw[:300])
        answers = []
        method = raw.split(b" ", 1)[0].decode("latin-1")  # a HEAD answer has no body
        with connect() as sock:
            try:
                sock.sendall(raw)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # answered and closed before reading it all: read the answer
            try:
                reader = HttpReader(sock)
                while (answer := reader.read(method)) is not None:
                    answers.append(answer)
                    method = "GET"
            except ValueError as exc:
                tally.count("gateway (misframed)", "malformed answer", "other", described, str(exc))
                return
            except OSError:
                pass  # the server reset a connection it could not trust: a valid end
        if not answers:
            tally.count("gateway (misframed)", "closed", None, described)
        for answer in answers:
            outcome, failure, detail = _classify(answer, raw)
            tally.count("gateway (misframed)", outcome, failure, described, detail)

    framed()
    misframed()


# ---------------------------------------------------------------- the run


def run(
    suite: Suite,
    facts: Facts,
    examples: int,
    wire_examples: int,
    http_examples: int,
    seed_value: int = 0,
    timeout: float = 10.0,
    only: str = "",
) -> dict[str, Any]:
    """Fuzz every RPC and the gateway; the figures, with the known answers compared."""
    # Huge generated values make hypothesis warn about long reprs; the cases are logged shorter.
    warnings.filterwarnings("ignore", category=HypothesisWarning)
    clients = Clients(suite)
    try:
        before = snapshot(clients, suite, facts)
        hints, good = facts.hints(), facts.good_requests()
        tally = Tally()
        started = time.perf_counter()
        rpcs = [r for r in all_rpcs() if only in r.name]
        for rpc in rpcs:
            began = time.perf_counter()
            fuzz_rpc(
                clients, rpc, hints, good.get(rpc.name, []), tally, examples, wire_examples,
                timeout, seed_value,
            )  # fmt: skip
            log.info(
                "%s: %s in %.1fs", rpc.name, dict(tally.codes.get(rpc.name, {})),
                time.perf_counter() - began,
            )  # fmt: skip
        grpc_seconds = time.perf_counter() - started
        if http_examples and not only:
            began = time.perf_counter()
            fuzz_http(suite.env["GATEWAY_ADDR"], facts, tally, http_examples, seed_value, timeout)
            log.info("gateway: %.1fs", time.perf_counter() - began)
        elapsed = time.perf_counter() - started
        time.sleep(1.0)
        after = snapshot(clients, suite, facts)
    finally:
        clients.close()
    changed = sorted(k for k in before if not same(before[k], after.get(k)))
    grpc_cases = {k: dict(v) for k, v in tally.codes.items() if not k.startswith("gateway")}
    http_cases = {k: dict(v) for k, v in tally.codes.items() if k.startswith("gateway")}
    return {
        "internal_or_unknown": tally.failed["internal"],
        "other_failures": tally.failed["other"],
        "cases": tally.cases,
        "grpc_cases": sum(sum(c.values()) for c in grpc_cases.values()),
        "http_cases": sum(sum(c.values()) for c in http_cases.values()),
        "rpcs": len(rpcs),
        "examples_per_rpc": examples,
        "wire_examples_per_rpc": wire_examples,
        "by_rpc": grpc_cases,
        "gateway": http_cases,
        "known_answers_checked": len(before),
        "known_answers_changed": changed,
        "seconds": round(elapsed, 1),
        "grpc_seconds": round(grpc_seconds, 1),
        "failures": tally.failures,
    }


def ok(figures: dict) -> bool:
    return not (
        figures["internal_or_unknown"]
        or figures["other_failures"]
        or figures["known_answers_changed"]
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--examples", type=int, default=200, help="structured requests per RPC")
    parser.add_argument("--wire-examples", type=int, default=50, help="mutated requests per RPC")
    parser.add_argument("--http-examples", type=int, default=400, help="gateway requests per kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="deadline per call (s)")
    parser.add_argument("--only", default="", help="fuzz only RPCs whose name contains this")
    parser.add_argument("--catalogue", type=Path, default=ROOT / "data/sample-catalogue/styles.csv")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--no-report", action="store_true", help="do not write docs/reliability")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("services.common.launcher").setLevel(logging.WARNING)
    with (
        tempfile.TemporaryDirectory(prefix="atelier-fuzz-") as work,
        fuzz_suite(Path(work), args.models, args.catalogue) as (suite, facts),
    ):
        figures = run(
            suite, facts, args.examples, args.wire_examples, args.http_examples,
            args.seed, args.timeout, args.only,
        )  # fmt: skip
        if not ok(figures):
            for name, managed in suite.processes.items():
                if managed.log_path and managed.log_path.exists():
                    tail = managed.log_path.read_text(errors="replace")[-1500:]
                    log.info("--- %s log tail ---\n%s", name, tail)
    figures["catalogue_items"] = len(read_catalogue_csv(args.catalogue))
    figures["notes"] = (
        "Hypothesis-built requests for every RPC in atelier/v1 and the model server's "
        "PredictionService (from the descriptors; two in three are good requests edited in one "
        "field), the same mutated on the wire, and raw-socket gateway requests, well framed "
        "(each followed by a request that must still be answered) and misframed. "
        "internal_or_unknown: gRPC INTERNAL/UNKNOWN and HTTP 500/502; other_failures: leaked "
        "internals, connections out of sync or unanswered, statuses lost to oversized details; "
        "known_answers_changed: known-good requests answered differently after fuzzing."
    )
    print(json.dumps({k: v for k, v in figures.items() if k != "by_rpc"}, indent=1))
    if not args.no_report:
        from bench import report

        command = "python -m bench.fuzz " + " ".join(sys.argv[1:])
        report.update("fuzz", figures, command.strip(), report="reliability")
    return 0 if ok(figures) else 1


if __name__ == "__main__":
    sys.exit(main())
