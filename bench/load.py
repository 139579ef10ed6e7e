"""Mixed client load against a locally started suite, checked against reference answers.

Shared by `bench.chaos` and `bench.soak`:

- `running_suite`: the whole suite (embedded Redis with AOF, model server, encoder, a Celery worker,
  decoder, retrieval, recommender, gateway) on loopback, every process restarted when it dies as
  compose's `restart: unless-stopped` would; generation 1 is the shipped sample catalogue, served;
  generation 2 (the same model under a second version) takes the catalogue jobs.
- `References`: answers taken before any fault; a reply that differs from them is a wrong answer,
  while an error is a status.
- `Load`: bounded client loops (search, recommend, decode, encode, studio round trips), recording
  every call's outcome and latency.
- `probe`: is every process answering again: health SERVING and one real request to each.

Every client channel is made by `channel` and every gateway request by `http`, which send
`ATELIER_TOKEN` as a bearer token when it is set.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

import grpc
import numpy as np
import redis
from celery import Celery
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from atelier.catalogue import CatalogueItem, read_catalogue_csv
from atelier.modelinfo import DECODER_NAME, ENCODER_NAME, METADATA_FILE, model_versions
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
from services.common.client import follow_job
from services.common.launcher import PORT_VARS, Suite, local_suite
from services.common.runtime import MAX_MESSAGE_BYTES

log = logging.getLogger("bench.load")

GRPC_SERVICES = ("modelserver", "encoder", "decoder", "retrieval", "recommender")
# The processes of docker-compose.yml that stay up, in the order the chaos run kills them.
PROCESSES = (
    "modelserver", "encoder", "worker", "decoder", "retrieval", "recommender", "gateway", "redis",
)  # fmt: skip
KINDS = ("search", "recommend", "decode", "encode", "studio")
JOB_KIND = "job"  # GetJob polling of a running catalogue job (bench.chaos)
ALLOWED_ERRORS = ("UNAVAILABLE", "DEADLINE_EXCEEDED")
BACK_PRESSURE = "RESOURCE_EXHAUSTED"  # documented back-pressure: counted apart, not an error
WRONG = "WRONG_ANSWER"
OK = "OK"
SERVED_VERSION, JOB_VERSION = 1, 2
# The bench's own channels retry a restarted server within a second; gRPC's default backoff
# (up to 120 s) would otherwise be measured as the service's recovery time.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class WrongAnswer(Exception):
    """A reply that differs from the reference answer."""


# --- clients -------------------------------------------------------------------------------


def auth_token() -> str | None:
    return os.environ.get("ATELIER_TOKEN") or None


class _BearerToken(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, token: str):
        self.metadata = (("authorization", f"Bearer {token}"),)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        metadata = [*(client_call_details.metadata or ()), *self.metadata]
        return continuation(client_call_details._replace(metadata=metadata), request)


def channel(address: str) -> grpc.Channel:
    """Every benchmark gRPC channel, so credentials are added in one place."""
    made = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    token = auth_token()
    return grpc.intercept_channel(made, _BearerToken(token)) if token else made


def http(url: str, body: bytes | None = None, timeout: float = 5.0) -> bytes:
    """One gateway request (POST when there is a body); raises urllib's errors."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token := auth_token():
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def http_outcome(exc: BaseException) -> str:
    """A gateway failure as the gRPC status name it stands for."""
    if isinstance(exc, urllib.error.HTTPError):
        return {503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED", 429: BACK_PRESSURE}.get(
            exc.code, f"HTTP_{exc.code}"
        )
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError | socket.timeout):
        return "DEADLINE_EXCEEDED"
    if isinstance(reason, OSError | HTTPException | urllib.error.URLError):
        return "UNAVAILABLE"  # refused, reset or cut off: the gateway is down
    return f"CLIENT_{type(exc).__name__}"


@dataclass
class Clients:
    """Stubs of every service on long-lived channels, plus the gateway's base URL."""

    env: dict[str, str]
    timeout: float = 5.0
    _channels: list[grpc.Channel] = field(default_factory=list)

    def __post_init__(self) -> None:
        def open_(name: str) -> grpc.Channel:
            made = channel(self.env[f"{name.upper()}_ADDR"])
            self._channels.append(made)
            return made

        self.encoder = encoder_pb2_grpc.EncoderServiceStub(open_("encoder"))
        self.decoder = decoder_pb2_grpc.DecoderServiceStub(open_("decoder"))
        self.retrieval = retrieval_pb2_grpc.RetrievalServiceStub(open_("retrieval"))
        self.recommender = recommender_pb2_grpc.RecommenderServiceStub(open_("recommender"))
        self.gateway = f"http://{self.env['GATEWAY_ADDR']}"

    def close(self) -> None:
        for made in self._channels:
            made.close()

    def __enter__(self) -> Clients:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the suite -----------------------------------------------------------------------------


def two_versions(models_dir: Path, target: Path) -> Path:
    """The newest model under models_dir as versions 1 (served) and 2 (catalogue jobs)."""
    newest = model_versions(models_dir)[-1]
    for name in (ENCODER_NAME, DECODER_NAME):
        for version in (SERVED_VERSION, JOB_VERSION):
            copy = target / name / str(version)
            shutil.copytree(models_dir / name / str(newest), copy)
            metadata = json.loads((copy / METADATA_FILE).read_text())
            metadata["version"] = version
            (copy / METADATA_FILE).write_text(json.dumps(metadata))
    return target


@contextmanager
def running_suite(
    work: Path,
    models_dir: Path,
    catalogue: Path,
    extra_env: dict[str, str] | None = None,
    appendfsync: str = "everysec",
) -> Iterator[Suite]:
    """The whole suite, supervised, serving the catalogue as generation 1; stopped by pid on exit."""
    models = two_versions(models_dir, work / "models")
    env = {"GATEWAY_IMAGE_ROOT": str(catalogue.resolve().parent), **(extra_env or {})}
    with (
        local_suite(
            work, models, workers=1, extra_env=env, restart=True, redis_appendfsync=appendfsync
        ) as suite,
        environment(ATELIER_TOKEN=suite.token or ""),
    ):
        store = CodeStore.from_url(suite.env["REDIS_URL"])
        with channel(suite.env["ENCODER_ADDR"]) as made:
            stub = encoder_pb2_grpc.EncoderServiceStub(made)
            job = stub.SubmitCatalogue(
                encoder_pb2.SubmitCatalogueRequest(
                    csv_path=str(catalogue.resolve()), model_version=SERVED_VERSION
                ),
                timeout=120,
            )
            job = follow_job(stub, job, "encoding the catalogue", timeout=1800)
        store.serve(SERVED_VERSION)
        for name in ("decoder", "retrieval", "recommender"):
            suite.start_service(name, timeout=600)
        suite.start_gateway()
        log.info("suite up: %d items served (%d failed)", job.done, job.failed)
        yield suite


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block (e.g. the suite's token, read by `auth_token`)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# --- reference answers ---------------------------------------------------------------------


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def same_image(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 2  # PNG of float pixels: ±rounding


def similar_ids(reply: recommender_pb2.RecommendResponse) -> tuple:
    return (
        tuple(s.item.item_id for s in reply.similar.items),
        tuple((p.partition, tuple(s.item.item_id for s in p.items)) for p in reply.pairings),
    )


def studio_ids(reply: dict) -> tuple:
    return (
        tuple(s["item_id"] for s in reply["similar"]),
        tuple((p["category"], tuple(s["item_id"] for s in p["items"])) for p in reply["pairings"]),
    )


@dataclass
class References:
    """Answers taken before any fault, for a fixed set of catalogue items."""

    items: list[CatalogueItem]
    mu: dict[str, np.ndarray]  # every served item's code
    photos: dict[str, bytes]
    search: dict[str, tuple] = field(default_factory=dict)
    recommend: dict[str, tuple] = field(default_factory=dict)
    decode: dict[str, np.ndarray] = field(default_factory=dict)
    encode: dict[str, np.ndarray] = field(default_factory=dict)
    studio_decode: dict[str, np.ndarray] = field(default_factory=dict)
    studio_recommend: dict[str, tuple] = field(default_factory=dict)

    @classmethod
    def take(
        cls, clients: Clients, store: CodeStore, catalogue: Path, count: int = 16
    ) -> References:
        codes = store.load_codes(SERVED_VERSION)
        mu = {item_id: codes.mu[row] for row, item_id in enumerate(codes.item_ids)}
        served = [item for item in read_catalogue_csv(catalogue) if item.item_id in mu]
        chosen = served[:: max(1, len(served) // count)][:count]
        refs = cls(chosen, mu, {i.item_id: i.image_path.read_bytes() for i in chosen})
        calls = Calls(clients, refs, check=False)
        for index in range(len(chosen)):
            for kind in KINDS:
                calls.call(kind, index)
        Calls(clients, refs, check=True).verify_all()  # asked twice: the answers are stable
        return refs

    def item(self, index: int) -> str:
        return self.items[index % len(self.items)].item_id


class Calls:
    """The five kinds of client call; each checks its reply against the references (or records
    it as the reference, when check is False)."""

    def __init__(self, clients: Clients, refs: References, check: bool = True):
        self.clients = clients
        self.refs = refs
        self.check = check
        self.job_id: str | None = None  # the running catalogue job, polled by the `job` kind
        self._job_seen: tuple[str, int, int] | None = None  # job id, total, done + failed

    def job(self, index: int) -> None:
        """GetJob of the running job: its total never changes, its progress never goes back."""
        job_id = self.job_id
        if job_id is None:
            time.sleep(0.1)
            return
        reply = self.clients.encoder.GetJob(
            encoder_pb2.GetJobRequest(job_id=job_id), timeout=self.clients.timeout
        )
        seen = (job_id, reply.total, reply.done + reply.failed)
        last, self._job_seen = self._job_seen, seen
        if last and last[0] == job_id and (seen[1] != last[1] or seen[2] < last[2]):
            raise WrongAnswer(f"job {job_id}: progress {last[1:]} then {seen[1:]}")

    def call(self, kind: str, index: int) -> None:
        getattr(self, kind)(index)

    def verify_all(self) -> None:
        for index in range(len(self.refs.items)):
            for kind in KINDS:
                self.call(kind, index)

    def _expect(self, table: dict, key: str, value, same=lambda a, b: a == b) -> None:
        if not self.check:
            table[key] = value
        elif not same(table[key], value):
            raise WrongAnswer(f"{key}: reply differs from the reference")

    def search(self, index: int) -> None:
        item = self.refs.item(index)
        reply = self.clients.retrieval.Search(
            retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id=item), k=10),
            timeout=self.clients.timeout,
        )
        self._expect(self.refs.search, item, tuple(r.item.item_id for r in reply.results))

    def recommend(self, index: int) -> None:
        item = self.refs.item(index)
        reply = self.clients.recommender.Recommend(
            recommender_pb2.RecommendRequest(query=common_pb2.Query(item_id=item), k=10),
            timeout=self.clients.timeout,
        )
        self._expect(self.refs.recommend, item, similar_ids(reply))

    def decode(self, index: int) -> None:
        item = self.refs.item(index)
        code = common_pb2.LatentVector(values=self.refs.mu[item].tolist())
        reply = self.clients.decoder.Decode(
            decoder_pb2.DecodeRequest(codes=[code]), timeout=self.clients.timeout
        )
        self._expect(self.refs.decode, item, pixels(reply.png[0]), same_image)

    def encode(self, index: int) -> None:
        item = self.refs.item(index)
        reply = self.clients.encoder.Encode(
            encoder_pb2.EncodeRequest(image=self.refs.photos[item], model_version=SERVED_VERSION),
            timeout=self.clients.timeout,
        )
        mu = np.asarray(reply.code.mu, np.float32)
        self._expect(self.refs.encode, item, mu, lambda a, b: np.allclose(a, b, atol=1e-4))

    def studio(self, index: int) -> None:
        """The design studio's round trip through the gateway: a random start, then decode and
        recommend for a code (a reference item's, so the answers can be checked)."""
        base, timeout = self.clients.gateway, self.clients.timeout
        start = json.loads(http(f"{base}/api/start", timeout=timeout))
        stored = self.refs.mu.get(start["item"]["item_id"])
        if self.check and (
            stored is None or not np.allclose(start["code"], stored, atol=1e-5)
        ):  # the start is random: check it against the served codes instead
            raise WrongAnswer(f"start {start['item']['item_id']}: code differs from the store")
        item = self.refs.item(index)
        body = json.dumps({"code": self.refs.mu[item].tolist()}).encode()
        png = http(f"{base}/api/decode", body, timeout=timeout)
        self._expect(self.refs.studio_decode, item, pixels(png), same_image)
        reply = json.loads(http(f"{base}/api/recommend", body, timeout=timeout))
        self._expect(self.refs.studio_recommend, item, studio_ids(reply))


# --- load ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    at: float  # time.monotonic() when the call ended
    kind: str
    outcome: str  # OK, WRONG_ANSWER or a status name
    ms: float


class Load:
    """Bounded client loops: `threads` per kind of call, until stop() or the deadline."""

    def __init__(
        self,
        calls: Calls,
        deadline_seconds: float,
        threads: int = 1,
        pause: float = 0.0,
        kinds: tuple[str, ...] = KINDS,
    ):
        self.calls = calls
        self.deadline = time.monotonic() + deadline_seconds
        self.pause = pause
        self.events: list[Event] = []
        # What the first disallowed failures said (status details, the gateway's error and
        # request id), so a rare error can be traced in the suite's logs.
        self.failure_samples: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._loop, args=(kind, n), name=f"load-{kind}-{n}", daemon=True
            )
            for kind in kinds
            for n in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _loop(self, kind: str, offset: int) -> None:
        index = offset * 7
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            started = time.monotonic()
            try:
                self.calls.call(kind, index)
                outcome = OK
            except WrongAnswer as exc:
                log.warning("%s: wrong answer: %s", kind, exc)
                outcome = WRONG
            except grpc.RpcError as exc:
                outcome = exc.code().name
                self._sample(kind, outcome, exc.details() or "")
            except (OSError, HTTPException, urllib.error.URLError) as exc:
                outcome = http_outcome(exc)
                body = (
                    exc.read().decode(errors="replace")
                    if isinstance(exc, urllib.error.HTTPError)
                    else ""
                )
                self._sample(kind, outcome, body or str(exc))
            except Exception as exc:  # anything else is the client's surprise: an error too
                log.exception("%s: unexpected failure", kind)
                outcome = f"CLIENT_{type(exc).__name__}"
            ended = time.monotonic()
            self.events.append(Event(ended, kind, outcome, (ended - started) * 1e3))
            index += 1
            # After a failure wait a little, so a dead server is not hammered with instant refusals.
            self._stop.wait(self.pause if outcome == OK else max(self.pause, 0.05))

    def _sample(self, kind: str, outcome: str, detail: str) -> None:
        if outcome in (*ALLOWED_ERRORS, BACK_PRESSURE) or len(self.failure_samples) >= 20:
            return
        log.warning("%s: %s: %s", kind, outcome, detail[:500])
        self.failure_samples.append({"kind": kind, "outcome": outcome, "detail": detail[:500]})

    def window(self, start: float, end: float) -> list[Event]:
        return [e for e in list(self.events) if start <= e.at < end]


def summarise(events: list[Event]) -> dict:
    """Calls, wrong answers, and error counts by status name (back-pressure apart)."""
    outcomes = Counter(e.outcome for e in events)
    errors = {k: v for k, v in sorted(outcomes.items()) if k not in (OK, WRONG, BACK_PRESSURE)}
    return {
        "calls": len(events),
        "ok": outcomes[OK],
        "wrong_answers": outcomes[WRONG],
        "resource_exhausted": outcomes[BACK_PRESSURE],
        "errors": errors,
        "disallowed_errors": sum(v for k, v in errors.items() if k not in ALLOWED_ERRORS),
    }


def latencies(events: list[Event]) -> dict[str, dict[str, float]]:
    """p50/p99 of the successful calls, per kind."""
    figures = {}
    for kind in sorted({e.kind for e in events}):
        ms = [e.ms for e in events if e.kind == kind and e.outcome == OK]
        if ms:
            figures[kind] = {
                "calls": len(ms),
                "p50_ms": round(float(np.percentile(ms, 50)), 2),
                "p99_ms": round(float(np.percentile(ms, 99)), 2),
            }
    return figures


# --- recovery probe ------------------------------------------------------------------------


def worker_pong(redis_url: str, timeout: float = 1.0) -> bool:
    """A Celery worker answers a control ping through the broker."""
    app = Celery("atelier-probe", broker=redis_url)
    app.conf.broker_connection_retry = False
    app.conf.broker_connection_timeout = timeout
    try:
        with app.connection_for_write() as connection:
            return bool(app.control.ping(timeout=timeout, limit=1, connection=connection))
    except Exception:
        return False


def health_serving(address: str, timeout: float = 1.0) -> bool:
    with channel(address) as made:
        try:
            reply = health_pb2_grpc.HealthStub(made).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def probe(env: dict[str, str], refs: References, job_id: str | None = None) -> list[str]:
    """What is not answering yet (empty once every process is back). Recovered means: Redis
    answers PING; every gRPC service's health says SERVING; the gateway's /healthz says 200; a
    worker answers Celery's ping; and one real call of each kind (Search, Recommend, Decode,
    Encode through the model server, GetJob through Redis, the studio round trip through the
    gateway) succeeds with the reference answer, on fresh connections."""

    def redis_ok() -> bool:
        client = redis.Redis.from_url(env["REDIS_URL"], socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def gateway_ok() -> bool:
        try:
            http(f"http://{env['GATEWAY_ADDR']}/healthz", timeout=3)
            return True
        except (OSError, HTTPException):
            return False

    def call_ok(kind: str) -> Callable[[], bool]:
        def run() -> bool:
            with Clients(env, timeout=3.0) as clients:
                try:
                    Calls(clients, refs).call(kind, 0)
                    return True
                except (WrongAnswer, grpc.RpcError, OSError, HTTPException):
                    return False

        return run

    def job_ok() -> bool:
        if job_id is None:
            return True
        with channel(env["ENCODER_ADDR"]) as made:
            try:
                encoder_pb2_grpc.EncoderServiceStub(made).GetJob(
                    encoder_pb2.GetJobRequest(job_id=job_id), timeout=3
                )
                return True
            except grpc.RpcError:
                return False

    checks: dict[str, Callable[[], bool]] = {
        "redis": redis_ok,
        "worker": lambda: worker_pong(env["REDIS_URL"]),
        "gateway": gateway_ok,
        "get_job": job_ok,
        **{
            f"{name}_health": functools.partial(health_serving, env[PORT_VARS[name][1]])
            for name in GRPC_SERVICES
        },
        **{f"{kind}_call": call_ok(kind) for kind in KINDS},
    }
    with ThreadPoolExecutor(len(checks)) as pool:
        results = dict(zip(checks, pool.map(lambda check: check(), checks.values()), strict=True))
    return sorted(name for name, ok in results.items() if not ok)


# --- process memory ------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (a worker's pool children too)."""
    import psutil

    try:
        process = psutil.Process(pid)
        family = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return round(total / 2**20, 1)


def process_of(suite: Suite, name: str):
    return suite.processes["worker1" if name == "worker" else name]
