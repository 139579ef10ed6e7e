"""SubmitCatalogue reads only below the catalogue roots, echoes no file content, and keeps its limits.

Against the real encoder, a worker, the model server and Redis: every path outside the roots is
refused (the CSV: the request; an image: its item), whether or not it exists.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc
import pytest

from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from services.common.launcher import local_suite

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SECRET = "s3cr3t-line-that-must-never-leave-the-server"


@pytest.fixture(scope="module")
def area(tmp_path_factory) -> dict[str, Path]:
    """A catalogue root with a good catalogue, and a folder outside it holding a secret."""
    root = tmp_path_factory.mktemp("root")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.csv").write_text(f"id,image_path\n1,{SECRET}\n")
    (outside / "secret.jpg").write_text(SECRET)
    (root / "escape.csv").symlink_to(outside / "secret.csv")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "not-a-catalogue.csv").write_text(f"{SECRET}:x:0:0\nmore:{SECRET}\n")
    images = sorted((FIXTURES / "fashion-product-tiny" / "images").iterdir())[:3]
    return {"root": root, "outside": outside, "images": images}  # type: ignore[dict-item]


@pytest.fixture(scope="module")
def suite(tmp_path_factory, area, two_version_models):
    env = {
        "CATALOGUE_ROOTS": os.pathsep.join([str(area["root"]), str(FIXTURES)]),
        "MAX_JOB_ENTRIES": "50",
        "MAX_INLINE_IMAGE_BYTES": "65536",
    }
    work = tmp_path_factory.mktemp("confinement-suite")
    with local_suite(work, two_version_models, workers=1, extra_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def stub(suite):
    channel = suite.channel("encoder")  # sends the suite's admin token
    yield encoder_pb2_grpc.EncoderServiceStub(channel)
    channel.close()


def _submit_csv(stub, csv_path: str, image_dir: str = "") -> common_pb2.Job:
    request = encoder_pb2.SubmitCatalogueRequest(
        csv_path=csv_path, image_dir=image_dir, model_version=1
    )
    return stub.SubmitCatalogue(request, timeout=60)


def _refusal(stub, csv_path: str, image_dir: str = "") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        _submit_csv(stub, csv_path, image_dir)
    assert SECRET not in error.value.details()
    return error.value


def _wait(stub, job_id: str, timeout: float = 240.0) -> common_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job_id, max_failures=100), timeout=10)
        if job.state in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_FAILED):
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish")


@pytest.mark.parametrize(
    "path",
    [
        "/etc/passwd",
        "/proc/self/environ",
        "{outside}/secret.csv",
        "{outside}/no-such.csv",
        "{root}/../{outside_name}/secret.csv",
        "{root}/escape.csv",
    ],
    ids=["etc-passwd", "proc-environ", "outside", "outside-missing", "dotdot", "symlink-out"],
)
def test_a_csv_outside_the_roots_is_refused_alike(stub, area, path):
    path = path.format(
        root=area["root"], outside=area["outside"], outside_name=area["outside"].name
    )
    error = _refusal(stub, path)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details().endswith("is outside the catalogue roots")
    assert "root:x" not in error.details()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("file:///etc/passwd", "looks like a URL"),
        ("http://127.0.0.1/styles.csv", "looks like a URL"),
        ("/etc/passwd\x00.csv", "NUL"),
        ("/" + "x/" * 3000 + "styles.csv", "longer than"),
        ("data/sample-catalogue/styles.csv", "relative"),
    ],
    ids=["file-url", "http-url", "nul", "very-long", "relative"],
)
def test_a_malformed_csv_path_is_invalid(stub, path, reason):
    error = _refusal(stub, path)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in error.details()


def test_image_dir_is_confined_too(stub):
    csv_path = str(FIXTURES / "fashion-product-tiny" / "styles.csv")
    error = _refusal(stub, csv_path, image_dir="/etc")
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


def test_inside_the_roots_missing_is_not_found_and_junk_is_not_echoed(stub, area):
    error = _refusal(stub, str(area["root"] / "missing.csv"))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    error = _refusal(stub, str(area["root"] / "not-a-catalogue.csv"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown schema" in error.details()


def test_image_paths_outside_the_roots_fail_their_items_only(stub, area):
    good = area["images"]
    rows = [f"good{i},{p},Shoes" for i, p in enumerate(good)]
    rows += [
        "passwd,/etc/passwd,Shoes",
        f"sibling,{area['outside'] / 'secret.jpg'},Shoes",
        f"dotdot,../{area['outside'].name}/secret.jpg,Shoes",
        "symlink,escape.jpg,Shoes",
        "url,file:///etc/passwd,Shoes",
        f"missing,{area['outside'] / 'nothing.jpg'},Shoes",
    ]
    csv_path = area["root"] / "mixed.csv"
    csv_path.write_text("id,image_path,category\n" + "\n".join(rows) + "\n")
    job = _wait(stub, _submit_csv(stub, str(csv_path)).job_id)
    failures = {f.item_id: f.reason for f in job.failures}
    assert job.state == common_pb2.JOB_STATE_SUCCEEDED and (job.done, job.failed) == (3, 6)
    for item_id in ("passwd", "sibling", "dotdot", "symlink", "missing"):
        assert failures[item_id].endswith("is outside the catalogue roots"), failures[item_id]
    assert "URL" in failures["url"]
    assert not any(SECRET in reason or "root:x" in reason for reason in failures.values())


def test_inline_entries_keep_no_path_and_ref_entries_are_confined(stub, area):
    image = area["images"][0].read_bytes()
    entries = [
        encoder_pb2.CatalogueEntry(
            item=common_pb2.Item(item_id="inline", image_ref="/etc/passwd"), image=image
        ),
        encoder_pb2.CatalogueEntry(item=common_pb2.Item(item_id="ref", image_ref="/etc/passwd")),
    ]
    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(
            entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=1
        ),
        timeout=60,
    )
    job = _wait(stub, job.job_id)
    assert (job.done, job.failed) == (1, 1)
    assert "outside the catalogue roots" in job.failures[0].reason


def test_limits_are_clear_errors(stub, area):
    image = area["images"][0].read_bytes()
    too_big = encoder_pb2.CatalogueEntry(
        item=common_pb2.Item(item_id="big"), image=image + b"\0" * 65536
    )
    with pytest.raises(grpc.RpcError) as error:
        stub.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(entries=[too_big]), model_version=1
            ),
            timeout=60,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "MAX_INLINE_IMAGE_BYTES" in error.value.details()
    rows = [f"r{i},{area['images'][0]},Shoes" for i in range(51)]
    csv_path = area["root"] / "too-long.csv"
    csv_path.write_text("id,image_path,category\n" + "\n".join(rows) + "\n")
    error = _refusal(stub, str(csv_path))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 50 rows (MAX_JOB_ENTRIES)" in error.details()
