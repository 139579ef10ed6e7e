"""Shared request translation for the query services: Query -> latent vector, rows -> ScoredItems."""

from __future__ import annotations

import grpc
import numpy as np

from atelier.generation import Generation
from atelier.latent import validate_vector
from atelier.search import query_space
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

METHODS = {
    common_pb2.RANKING_METHOD_UNSPECIFIED: "fixed_eps",
    common_pb2.RANKING_METHOD_LOGLIK: "loglik",
    common_pb2.RANKING_METHOD_FIXED_EPS: "fixed_eps",
    common_pb2.RANKING_METHOD_MU_L2: "mu_l2",
    common_pb2.RANKING_METHOD_COSINE: "cosine",
    common_pb2.RANKING_METHOD_CITYBLOCK: "cityblock",
}
MAX_IMAGE_BYTES = 16 * 1024 * 1024


class QueryError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def method_name(value: int) -> str:
    if value not in METHODS:
        raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"unknown ranking method {value}")
    return METHODS[value]


def check_k(k: int) -> int:
    if not 1 <= k <= 1000:
        raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, f"k must be between 1 and 1000, got {k}")
    return k


def resolve(
    query: common_pb2.Query,
    generation: Generation,
    method: str,
    encoder: encoder_pb2_grpc.EncoderServiceStub | None,
    remaining: float | None,
    max_abs: float,
) -> tuple[np.ndarray, int | None]:
    """The query's vector in the method's space, and its own row when it is a catalogue item."""
    space = query_space(method)
    source = query.WhichOneof("source")
    if source == "vector":
        try:
            return validate_vector(query.vector.values, generation.latent_dim, max_abs), None
        except ValueError as exc:
            raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
    if source == "item_id":
        row = generation.row_of.get(query.item_id)
        if row is None:
            raise QueryError(
                grpc.StatusCode.NOT_FOUND,
                f"unknown item {query.item_id!r} in generation {generation.version}",
            )
        return generation.codes.space(space)[row].astype(np.float64), row
    if source == "image":
        if not query.image:
            raise QueryError(grpc.StatusCode.INVALID_ARGUMENT, "image is empty")
        if len(query.image) > MAX_IMAGE_BYTES:
            raise QueryError(
                grpc.StatusCode.INVALID_ARGUMENT, f"image is larger than {MAX_IMAGE_BYTES} bytes"
            )
        if encoder is None:
            raise QueryError(
                grpc.StatusCode.FAILED_PRECONDITION, "query by image needs ENCODER_ADDR"
            )
        timeout = 10.0 if remaining is None else max(0.001, min(10.0, remaining))
        try:
            reply = encoder.Encode(
                encoder_pb2.EncodeRequest(image=query.image, model_version=generation.version),
                timeout=timeout,
            )
        except grpc.RpcError as exc:
            code = (
                exc.code()
                if exc.code()
                in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED)
                else grpc.StatusCode.UNAVAILABLE
            )
            raise QueryError(code, f"encoder: {exc.details()}") from None
        values = reply.code.z if space == "z" else reply.code.mu
        return np.asarray(values, dtype=np.float64), None
    raise QueryError(
        grpc.StatusCode.INVALID_ARGUMENT, "query needs a vector, an item_id or an image"
    )


def scored_items(
    generation: Generation, rows: np.ndarray, scores: np.ndarray, space: str
) -> list[common_pb2.ScoredItem]:
    items = []
    assert generation.kmeans is not None
    labels = generation.kmeans.partitions[space].labels
    for row, score in zip(rows.tolist(), scores.tolist(), strict=True):
        meta = generation.metadata[row]
        item = common_pb2.Item(
            item_id=generation.codes.item_ids[row],
            category=meta.get("category", ""),
            article_type=meta.get("article_type", ""),
            colour=meta.get("colour", ""),
            name=meta.get("name", ""),
            image_ref=meta.get("image_ref", ""),
        )
        items.append(common_pb2.ScoredItem(item=item, score=score, cluster=int(labels[row])))
    return items
