"""A short run of bench/fuzz.py against a real suite on the 300-item fixture: a few hypothesis
examples per RPC and per gateway framing kind; no INTERNAL/UNKNOWN, and the same known answers
after as before. The full run (`python -m bench.fuzz`) writes docs/reliability.json."""

from __future__ import annotations

import pytest

from bench.fuzz import all_rpcs, fuzz_suite, run

pytestmark = pytest.mark.integration
EXAMPLES = 20


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory, models_dir, tiny_csv) -> dict:
    work = tmp_path_factory.mktemp("fuzz")
    with fuzz_suite(work, models_dir, tiny_csv) as (suite, facts):
        yield run(suite, facts, examples=EXAMPLES, wire_examples=5, http_examples=15)


def test_no_internal_or_unknown(fuzzed):
    assert fuzzed["internal_or_unknown"] == 0, fuzzed["failures"]


def test_every_rpc_and_the_gateway_were_fuzzed(fuzzed):
    for rpc in all_rpcs():
        assert sum(fuzzed["by_rpc"][rpc.name].values()) == EXAMPLES, rpc.name
        assert sum(fuzzed["by_rpc"][f"{rpc.name} (wire)"].values()) == 5, rpc.name
    assert sum(fuzzed["gateway"]["gateway (framed)"].values()) == 15
    # Some generated requests were good enough to be answered.
    assert sum(counts.get("OK", 0) for counts in fuzzed["by_rpc"].values()) > 0


def test_services_answer_as_before(fuzzed):
    assert fuzzed["known_answers_changed"] == []
    assert fuzzed["known_answers_checked"] >= 10
