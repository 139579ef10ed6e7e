"""Try to make the encoder read outside its catalogue roots, and measure what jobs keep in Redis.

    python -m bench.confinement_probe

Starts Redis, the model server and the encoder (services/common/launcher.py), with one catalogue
root. Confinement: SubmitCatalogue is tried with CSV paths, image folders, image paths inside a
CSV (both schemas) and inline entries' image refs that point outside the root: absolute paths
(/etc/passwd, /proc/self/environ, a valid catalogue and photo outside), `..` traversal, symlinks
inside the root pointing out, URL-like paths, NUL bytes and very long paths. An escape is any
file outside the root being read (a job accepted from an outside CSV, an outside photo encoded)
or its content (or the encoder's environment) echoed in a status or a failure reason.
Writes key `confinement` (`escapes`, `tried`) to docs/reliability.*.

Retention: a 1,000-item catalogue job and a 100-item inline job are submitted with no worker
running, so their entries can be weighed (MEMORY USAGE over every job key), then a worker
encodes them and the keys left behind are weighed again, with the codes per encoded item.
Writes key `retention`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import grpc

from atelier.catalogue import read_catalogue_csv
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from bench import report
from services.common.launcher import local_suite

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample-catalogue"
CANARY = "canary-7f3e9b1c-outside-the-roots"
ENV_CANARY = "canary-env-4d2a8e60"
FINISHED = (
    common_pb2.JOB_STATE_SUCCEEDED,
    common_pb2.JOB_STATE_FAILED,
    common_pb2.JOB_STATE_CANCELLED,
)


def _leaks(text: str) -> bool:
    return any(s in text for s in (CANARY, ENV_CANARY, "root:x:0:0", "REDIS_URL="))


def build_area(base: Path) -> dict[str, Path]:
    """A catalogue root with good files and symlinks out, and a folder outside with bait."""
    root, outside = base / "root", base / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    photos = sorted((SAMPLE / "images").iterdir())
    for photo in photos[:3]:
        shutil.copy(photo, root / "images" / photo.name)
    shutil.copy(photos[3], outside / "photo.jpg")  # a real photo: encoding it would be an escape
    (outside / "catalogue.csv").write_text(
        f"id,image_path,category,name\nbait,{outside / 'photo.jpg'},Shoes,{CANARY}\n"
    )
    (outside / "images").mkdir()
    shutil.copy(photos[3], outside / "images" / "bait2.jpg")
    (root / "link.csv").symlink_to(outside / "catalogue.csv")
    (root / "passwd-link.csv").symlink_to("/etc/passwd")
    (root / "linkdir").symlink_to(outside)
    (root / "link-photo.jpg").symlink_to(outside / "photo.jpg")
    return {"root": root, "outside": outside}


def csv_attempts(root: Path, outside: Path) -> list[tuple[str, str, str]]:
    """(name, csv_path, image_dir) pairs that must all be refused."""
    good = str(root / "good.csv")
    return [
        ("etc_passwd", "/etc/passwd", ""),
        ("proc_environ", "/proc/self/environ", ""),
        ("outside_catalogue", str(outside / "catalogue.csv"), ""),
        ("outside_missing", str(outside / "missing.csv"), ""),
        ("dotdot", f"{root}/../{outside.name}/catalogue.csv", ""),
        ("deep_dotdot", f"{root}/images/../../../../../../etc/passwd", ""),
        ("symlink_file", str(root / "link.csv"), ""),
        ("symlink_passwd", str(root / "passwd-link.csv"), ""),
        ("symlink_dir", str(root / "linkdir" / "catalogue.csv"), ""),
        ("file_url", "file:///etc/passwd", ""),
        ("file_url_outside", f"file://{outside}/catalogue.csv", ""),
        ("http_url", "http://127.0.0.1/catalogue.csv", ""),
        ("nul", "/etc/passwd\x00.csv", ""),
        ("nul_in_root", f"{good}\x00/../../../etc/passwd", ""),
        ("very_long", "/" + "a/" * 5000 + "styles.csv", ""),
        ("relative", "../../../etc/passwd", ""),
        ("tilde", "~root/.profile", ""),
        ("image_dir_etc", good.replace("good.csv", "kaggle.csv"), "/etc"),
        ("image_dir_symlink", good.replace("good.csv", "kaggle.csv"), str(root / "linkdir")),
        ("image_dir_url", good.replace("good.csv", "kaggle.csv"), "file:///etc"),
    ]


def image_attempts(root: Path, outside: Path) -> dict[str, str]:
    """item id -> image path (as a CSV row gives it) that must fail its item."""
    return {
        "img_passwd": "/etc/passwd",
        "img_environ": "/proc/self/environ",
        "img_outside": str(outside / "photo.jpg"),
        "img_dotdot": f"../{outside.name}/photo.jpg",
        "img_abs_dotdot": f"{root}/images/../../{outside.name}/photo.jpg",
        "img_symlink": "link-photo.jpg",
        "img_symlink_dir": "linkdir/photo.jpg",
        "img_file_url": f"file://{outside}/photo.jpg",
        "img_http_url": "http://127.0.0.1/photo.jpg",
        "img_long": "/" + "b/" * 3000 + "photo.jpg",
    }


def wait(stub, job_id: str, timeout: float = 900.0) -> common_pb2.Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job_id, max_failures=10_000), timeout=10)
        if job.state in FINISHED:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"job {job_id} did not finish")


def probe_confinement(stub, store: CodeStore, area: dict[str, Path]) -> tuple[dict, list[str]]:
    root, outside = area["root"], area["outside"]
    photos = sorted((root / "images").iterdir())
    outcomes: dict[str, str] = {}
    escapes: list[str] = []
    # Requests that must be refused as a whole.
    kaggle = root / "kaggle.csv"
    kaggle.write_text(
        "id,masterCategory,subCategory,articleType\n"
        + "".join(f"{p.stem},Footwear,Shoes,Casual Shoes\n" for p in photos)
        + f"../../{outside.name}/images/bait2,Footwear,Shoes,Casual Shoes\n"
    )
    (root / "good.csv").write_text(
        "id,image_path,category\n" + "".join(f"good{p.stem},{p},Shoes\n" for p in photos)
    )
    for name, csv_path, image_dir in csv_attempts(root, outside):
        request = encoder_pb2.SubmitCatalogueRequest(
            csv_path=csv_path, image_dir=image_dir, model_version=1
        )
        try:
            job = stub.SubmitCatalogue(request, timeout=60)
        except grpc.RpcError as exc:
            outcomes[name] = exc.code().name
            if _leaks(exc.details() or ""):
                escapes.append(f"{name}: the status echoed content")
            continue
        outcomes[name] = "ACCEPTED"
        escapes.append(f"{name}: a job was accepted from {csv_path!r}")
        wait(stub, job.job_id)
    # Image paths inside CSVs that are themselves inside the root: each item must fail.
    images = image_attempts(root, outside)
    mixed = root / "mixed.csv"
    mixed.write_text(
        "id,image_path,category\n"
        + "".join(f"{item_id},{path},Shoes\n" for item_id, path in images.items())
        + "".join(f"ok{p.stem},{p},Shoes\n" for p in photos)
    )
    for label, path in (("mixed_csv", mixed), ("kaggle_csv", kaggle)):
        job = wait(stub, stub.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(csv_path=str(path), model_version=1), timeout=60
        ).job_id)  # fmt: skip
        failures = {f.item_id: f.reason for f in job.failures}
        outcomes[label] = f"{job.done} encoded, {job.failed} failed"
        for reason in failures.values():
            if _leaks(reason):
                escapes.append(f"{label}: a failure reason echoed content")
    for item_id in (*images, "../../outside/images/bait2"):
        if store.item(1, item_id) is not None:
            escapes.append(f"{item_id}: an image outside the root was encoded")
    # Inline entries naming outside paths, without bytes.
    entries = [
        encoder_pb2.CatalogueEntry(item=common_pb2.Item(item_id=f"ref_{item_id}", image_ref=path))
        for item_id, path in images.items()
    ]
    job = wait(stub, stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(
            entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=1
        ),
        timeout=60,
    ).job_id)  # fmt: skip
    outcomes["entries_image_ref"] = f"{job.done} encoded, {job.failed} failed"
    if job.done or any(_leaks(f.reason) for f in job.failures):
        escapes.append("entries_image_ref: an outside image was read or echoed")
    tried = len(csv_attempts(root, outside)) + 2 * len(images) + 1  # + the kaggle traversal id
    figures = {
        "escapes": len(escapes),
        "tried": tried,
        "outcomes": outcomes,
        "notes": (
            "Every path points outside the one catalogue root (or is not a plain path). "
            "Whole requests (CSV, image folder) must be refused: PERMISSION_DENIED outside "
            "the root, INVALID_ARGUMENT for URL-like, NUL, relative or overlong paths. Image "
            "paths in a CSV or an entry must fail their item. An escape is an outside file "
            "read (a job accepted, an outside photo encoded) or echoed, or the encoder's "
            "environment echoed."
        ),
    }
    return figures, escapes


def weigh(store: CodeStore, pattern: str) -> tuple[int, int]:
    """(keys, bytes) over the keys matching pattern, by MEMORY USAGE (every element sampled)."""
    keys = list(store.redis.scan_iter(match=pattern, count=5000))
    pipe = store.redis.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    return len(keys), sum(int(v or 0) for v in pipe.execute())


def probe_retention(suite, stub, store: CodeStore, area: dict[str, Path]) -> dict:
    items = read_catalogue_csv(SAMPLE / "styles.csv")[:1000]
    csv_path = area["root"] / "retention.csv"
    csv_path.write_text(
        "id,image_path,category\n"
        + "".join(f"r{i.item_id},{i.image_path.resolve()},{i.sub_category}\n" for i in items)
    )
    inline = [
        encoder_pb2.CatalogueEntry(
            item=common_pb2.Item(item_id=f"inline{i.item_id}", sub_category=i.sub_category),
            image=i.image_path.read_bytes(),
        )
        for i in items[:100]
    ]
    used_before = store.redis.info("memory")["used_memory"]
    job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(csv_path=str(csv_path), model_version=1), timeout=120
    )
    used_entries = store.redis.info("memory")["used_memory"]
    inline_job = stub.SubmitCatalogue(
        encoder_pb2.SubmitCatalogueRequest(
            entries=encoder_pb2.CatalogueEntries(entries=inline), model_version=1
        ),
        timeout=120,
    )
    csv_keys, csv_bytes = weigh(store, f"atelier:job:{job.job_id}*")
    inline_keys, inline_bytes = weigh(store, f"atelier:job:{inline_job.job_id}*")
    queued = store.redis.llen("atelier.encode")
    _, queue_bytes = weigh(store, "atelier.encode")
    codes_before = weigh(store, "atelier:gen:1:*")[1]
    suite.start_worker("worker1")
    finished = [wait(stub, j.job_id) for j in (job, inline_job)]
    csv_keys_after, csv_bytes_after = weigh(store, f"atelier:job:{job.job_id}*")
    inline_keys_after, inline_bytes_after = weigh(store, f"atelier:job:{inline_job.job_id}*")
    encoded = sum(j.done for j in finished)
    codes_bytes = weigh(store, "atelier:gen:1:*")[1] - codes_before
    ttl = store.redis.ttl(f"atelier:job:{job.job_id}")
    return {
        "catalogue_job_items": len(items),
        "inline_job_items": len(inline),
        "bytes_per_job_entry": round(csv_bytes / len(items), 1),
        "bytes_per_inline_entry": round(inline_bytes / len(inline), 1),
        "inline_image_bytes_mean": round(sum(len(e.image) for e in inline) / len(inline), 1),
        "used_memory_per_job_entry": round((used_entries - used_before) / len(items), 1),
        "job_keys_while_queued": csv_keys + inline_keys,
        "queued_task_messages": queued,
        "queue_bytes": queue_bytes,
        "encoded": encoded,
        "failed": sum(j.failed for j in finished),
        "bytes_per_encoded_item": round(codes_bytes / max(encoded, 1), 1),
        "job_keys_left_after": csv_keys_after + inline_keys_after,
        "bytes_left_per_job_entry_after": round(
            (csv_bytes_after + inline_bytes_after) / (len(items) + len(inline)), 1
        ),
        "inline_bytes_left_after": inline_bytes_after,
        "job_ttl_seconds_left": ttl,
        "notes": (
            "Job entries weighed with MEMORY USAGE right after SubmitCatalogue (no worker yet), "
            "then again once a worker has encoded both jobs: entries (inline bytes included) "
            "are deleted as each item is recorded, and what is left (the job hash, the id "
            "list, done set, failures, chunk marks) expires after JOB_TTL_SECONDS. Codes "
            "(gen:1:* blocks, slot map and bitmap) grow per encoded item and never expire. "
            "queued_task_messages: the per-job window (MAX_QUEUED_CHUNKS_PER_JOB) bounds it."
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", type=Path, default=Path("models"))
    args = parser.parse_args()
    command = "python -m bench." + Path(__file__).stem
    with tempfile.TemporaryDirectory() as tmp:
        area = build_area(Path(tmp) / "area")
        env = {
            "CATALOGUE_ROOTS": os.pathsep.join([str(area["root"]), str(SAMPLE)]),
            "PROBE_CANARY": ENV_CANARY,
            "MAX_QUEUED_CHUNKS_PER_JOB": "4",
        }
        print("starting Redis, the model server and the encoder ...", flush=True)
        with local_suite(Path(tmp) / "suite", args.models, workers=0, extra_env=env) as suite:
            channel = suite.channel("encoder")  # sends the suite's admin token
            stub = encoder_pb2_grpc.EncoderServiceStub(channel)
            store = CodeStore.from_url(suite.env["REDIS_URL"])
            print("retention: a 1,000-item job and a 100-item inline job ...", flush=True)
            retention = probe_retention(suite, stub, store, area)
            print(retention, flush=True)
            print("confinement ...", flush=True)
            confinement, escapes = probe_confinement(stub, store, area)
            print(confinement, flush=True)
            channel.close()
    for escape in escapes:
        print("ESCAPE:", escape)
    report.update("confinement", confinement, command, report="reliability")
    report.update("retention", retention, command, report="reliability")
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
