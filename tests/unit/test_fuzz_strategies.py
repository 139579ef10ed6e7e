"""The fuzzer's request strategies: every RPC gets messages of its own type under the size limit,
good requests are edited in one field only, and wire mutations really break the bytes."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atelier.v1 import decoder_pb2, retrieval_pb2
from bench.fuzz import MAX_REQUEST_BYTES, Facts, all_rpcs, edited, mutate, request_strategy

FACTS = Facts(16, ["1532", "1535"], ["Shoes", "Topwear"], b"\xff\xd8jpeg", "j1", "j2", [0.1] * 16)
QUICK = settings(
    max_examples=15, database=None, deadline=None, suppress_health_check=list(HealthCheck)
)


def test_every_service_method_is_found():
    names = {rpc.name for rpc in all_rpcs()}
    assert {
        "RetrievalService.Search",
        "EncoderService.SubmitCatalogue",
        "DecoderService.Decode",
    } <= names
    assert all(rpc.address_var.endswith("_ADDR") for rpc in all_rpcs())


@pytest.mark.parametrize("rpc", all_rpcs(model_server=False), ids=lambda rpc: rpc.name)
def test_requests_have_the_rpcs_type_and_fit(rpc):
    strategy = request_strategy(
        rpc.method.input_type, FACTS.hints(), FACTS.good_requests().get(rpc.name, [])
    )

    @QUICK
    @given(strategy)
    def check(request):
        assert request.DESCRIPTOR.full_name == rpc.method.input_type.full_name
        assert request.ByteSize() <= MAX_REQUEST_BYTES

    check()


@QUICK
@given(st.data())
def test_an_edit_changes_at_most_one_top_level_field(data):
    good = retrieval_pb2.SearchRequest(
        query={"item_id": "1532"}, k=5, scope=retrieval_pb2.SEARCH_SCOPE_CLUSTER, nprobe=2
    )
    changed = data.draw(edited(good, FACTS.hints()))
    differing = [
        f.name
        for f in good.DESCRIPTOR.fields
        if getattr(good, f.name) != getattr(changed, f.name)
        or (f.has_presence and good.HasField(f.name) != changed.HasField(f.name))
    ]
    assert len(differing) <= 1


def test_bad_utf8_and_truncation_do_not_parse():
    request = decoder_pb2.RandomStartRequest(category="Shoes", seed=3)
    with pytest.raises(DecodeError):
        decoder_pb2.RandomStartRequest.FromString(
            mutate(request.SerializeToString(), ("bad_utf8", 1))
        )
    serialized = request.SerializeToString()
    with pytest.raises(DecodeError):
        decoder_pb2.RandomStartRequest.FromString(mutate(serialized, ("truncate", (3, b"x"))))
