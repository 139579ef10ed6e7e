"""Start the suite's processes locally, with the entry points and environment variables compose uses.

Used by the demo, the integration tests and the benchmarks; every process is stopped by its pid.
Authentication is on unless asked otherwise: the suite creates an admin token in its Redis and
hands it to every process as ATELIER_TOKEN (services use it for their calls to each other), and
`suite.channel(name)` opens a channel to a service that sends it.
With `restart=True` every process is also restarted when it dies, as compose's
`restart: unless-stopped` does (see `ManagedProcess.supervise`); the chaos benchmark relies on it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atelier.auth import Role, TokenStore
from atelier.processes import free_port, start_redis, stop_pid
from services.common.auth import with_token
from services.common.client import Addresses, AtelierClient
from services.common.tls import ClientTLS, make_channel

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


# A variable given this value is removed from the process's environment (not just left empty:
# prometheus_client turns multiprocess mode on for a PROMETHEUS_MULTIPROC_DIR that is merely set).
UNSET = "\x00unset"

# Docker's restart policy (next_restart_delay): wait 100 ms before the first restart, double the
# wait after each restart that did not stay up, at most a minute; back to 100 ms once a process
# has run for 10 s.
RESTART_DELAY_SECONDS = 0.1
RESTART_DELAY_MAX_SECONDS = 60.0
RESTART_RESET_AFTER_SECONDS = 10.0


@dataclass
class ManagedProcess:
    """A started process; `spawn` starts it again with the same argv, environment and port."""

    name: str
    process: subprocess.Popen
    address: str | None = None
    log_path: Path | None = None
    spawn: Callable[[], subprocess.Popen] | None = None
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 15.0) -> None:
        """Stop for good: a supervised process is not restarted after this (`unless-stopped`)."""
        with self._lock:
            self._stopped = True
            self._stop_event.set()
            process = self.process
        stop_pid(process, timeout)

    def kill_tree(self) -> list[int]:
        """SIGKILL the process and all its descendants at once, as a container's death does.

        Returns the pids killed; a supervised process is then restarted like any other exit.
        """
        pids = [self.process.pid, *descendants(self.process.pid)]
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def supervise(self) -> threading.Thread:
        """Restart the process whenever it exits, until `stop`, with Docker's restart delays."""
        if self.spawn is None:
            raise ValueError(f"{self.name} has no spawn function to restart it with")
        thread = threading.Thread(
            target=self._restart_loop, name=f"restart-{self.name}", daemon=True
        )
        thread.start()
        return thread

    def _restart_loop(self) -> None:
        assert self.spawn is not None
        delay: float | None = None
        while True:
            code = self.process.wait()
            ran = time.monotonic() - self.started_at
            delay = next_restart_delay(delay, ran)
            if self._stop_event.wait(delay):
                return
            with self._lock:
                if self._stopped:
                    return
                try:
                    process = self.spawn()
                except Exception:  # e.g. Redis not listening in time: one more failed start
                    log.exception("restarting %s failed", self.name)
                    self.started_at = time.monotonic()
                    continue
                self.process, self.started_at = process, time.monotonic()
                self.restarts += 1
            log.warning(
                "%s exited with %s after %.1fs; restarted it (pid %d, restart %d)",
                self.name, code, ran, process.pid, self.restarts,
            )  # fmt: skip


def next_restart_delay(previous: float | None, ran: float) -> float:
    """Docker's restart delay: 100 ms at first, doubled after each restart that did not stay up
    for 10 s, at most a minute."""
    if previous is None or ran >= RESTART_RESET_AFTER_SECONDS:
        return RESTART_DELAY_SECONDS
    return min(previous * 2, RESTART_DELAY_MAX_SECONDS)


def descendants(pid: int) -> list[int]:
    """Every process below pid (children first level first), from /proc."""
    found: list[int] = []
    queue = [pid]
    while queue:
        parent = queue.pop(0)
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(v) for v in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError, ValueError):
                continue
            found.extend(children)
            queue.extend(children)
    return found


def start_process(
    name: str, argv: list[str], env: dict[str, str], log_dir: Path, address: str | None = None
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    merged = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2", **env}
    full_env = {name: value for name, value in merged.items() if value != UNSET}

    def spawn() -> subprocess.Popen:
        with log_path.open("ab") as handle:  # appends: a restarted process keeps one log
            return subprocess.Popen(
                argv, env=full_env, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT
            )

    process = spawn()
    log.info("started %s (pid %d)%s", name, process.pid, f" on {address}" if address else "")
    return ManagedProcess(name, process, address, log_path, spawn)


def start_supervised_redis(data_dir: Path, appendfsync: str = "everysec") -> ManagedProcess:
    """The embedded redis-server as a ManagedProcess, restarted on the same port and data dir."""
    server = start_redis(data_dir, appendfsync=appendfsync)

    def spawn() -> subprocess.Popen:
        return start_redis(data_dir, server.port, appendfsync=appendfsync).process

    return ManagedProcess(
        "redis", server.process, f"127.0.0.1:{server.port}", server.data_dir / "redis.log", spawn
    )


def wait_serving(
    managed: ManagedProcess, timeout: float = 120.0, tls: ClientTLS | None = None
) -> None:
    """Poll the standard gRPC health service until it says SERVING (TLS as `tls` says, None:
    from this process's environment)."""
    assert managed.address is not None
    deadline = time.monotonic() + timeout
    with make_channel(managed.address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if managed.process.poll() is not None:
                tail = managed.log_path.read_text()[-3000:] if managed.log_path else ""
                raise RuntimeError(
                    f"{managed.name} exited with {managed.process.returncode}:\n{tail}"
                )
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{managed.name} was not SERVING on {managed.address} within {timeout:.0f}s")


def wait_http(url: str, managed: ManagedProcess | None = None, timeout: float = 60.0) -> None:
    """Poll an HTTP URL until it answers 200 (and fail early if the process exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if managed is not None and managed.process.poll() is not None:
            tail = managed.log_path.read_text()[-3000:] if managed.log_path else ""
            raise RuntimeError(f"{managed.name} exited with {managed.process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s")


def celery_worker_argv(
    concurrency: int = 1,
    name: str = "worker",
    app: str = "services.encoder.tasks",
    queues: str | None = None,
) -> list[str]:
    """A Celery worker's command line: the encoder's by default, or another `app` (module or
    module:attribute) consuming `queues` (comma-separated)."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--pool", "prefork", "--concurrency", str(concurrency), "--loglevel", "INFO",
        "--hostname", f"{name}-{os.getpid()}-{free_port()}@%h", "--without-gossip", "--without-mingle",
        *(["--queues", queues] if queues else []),
    ]  # fmt: skip


PORT_VARS = {
    "modelserver": ("MODEL_SERVER_PORT", "MODEL_SERVER_ADDR"),
    "encoder": ("ENCODER_PORT", "ENCODER_ADDR"),
    "decoder": ("DECODER_PORT", "DECODER_ADDR"),
    "retrieval": ("RETRIEVAL_PORT", "RETRIEVAL_ADDR"),
    "recommender": ("RECOMMENDER_PORT", "RECOMMENDER_ADDR"),
    "personalization": ("PERSONALIZATION_PORT", "PERSONALIZATION_ADDR"),
    "gateway": ("GATEWAY_PORT", "GATEWAY_ADDR"),
}
# Personalisation's Celery workers, as compose runs them: (app, queue) by process name.
PERSONALIZATION_WORKERS = {
    "importer": ("services.personalization.tasks:import_app", "atelier.import"),
    "trainer": ("services.personalization.tasks:train_app", "atelier.train"),
}


@dataclass
class Suite:
    """Addresses and processes of a locally started suite. Every process is stopped by its pid.

    With `restart` set, every process added is restarted when it exits (`ManagedProcess.supervise`).
    """

    env: dict[str, str]
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    stack: ExitStack = field(default_factory=ExitStack)
    restart: bool = False
    metrics: bool = True  # every process serves /metrics on a port of its own
    metrics_addresses: dict[str, str] = field(default_factory=dict)  # process name -> host:port

    def client_tls(self) -> ClientTLS:
        """How this suite's clients reach its services (TLS_* from the suite's environment)."""
        return ClientTLS.from_env({**os.environ, **self.env})

    @property
    def token(self) -> str | None:
        """The suite's admin token (None with authentication off)."""
        return self.env.get("ATELIER_TOKEN") or None

    def channel(self, name: str, token: str | None = None) -> grpc.Channel:
        """A channel to service `name` sending `token` (default: the suite's admin token)."""
        address = self.env[PORT_VARS[name][1]]
        return with_token(make_channel(address, self.client_tls()), token or self.token)

    def client(self, timeout: float = 10.0, token: str | None = None) -> AtelierClient:
        """An AtelierClient for the suite's services, sending `token` (default: the admin one)."""
        names = ("encoder", "decoder", "retrieval", "recommender")
        addresses = Addresses(*(self.env[PORT_VARS[n][1]] for n in names))
        return AtelierClient(
            addresses, timeout=timeout, tls=self.client_tls(), token=token or self.token or ""
        )

    def add(self, managed: ManagedProcess) -> ManagedProcess:
        self.processes[managed.name] = managed
        self.stack.callback(managed.stop)
        if self.restart and managed.spawn is not None:
            managed.supervise()
        return managed

    @property
    def log_dir(self) -> Path:
        return Path(self.env["ATELIER_LOG_DIR"])

    def process_env(self, name: str, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of process `name`: the suite's (or `base`), plus its own metrics
        port and, for a Celery worker's pool processes, a fresh folder for their counters."""
        env = dict(self.env if base is None else base)
        if not self.metrics:
            env["METRICS_PORT"] = env["PROMETHEUS_MULTIPROC_DIR"] = UNSET
            return env
        port = free_port()
        env["METRICS_PORT"] = str(port)
        folder = self.log_dir / f"metrics-{name}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
        self.metrics_addresses[name] = f"127.0.0.1:{port}"
        return env

    def reserve_ports(self, names: tuple[str, ...]) -> None:
        """Give each service a free port, and every process every address (as compose would)."""
        for name in names:
            port_var, addr_var = PORT_VARS[name]
            if port_var not in self.env:
                port = free_port()
                self.env[port_var] = str(port)
                self.env[addr_var] = f"127.0.0.1:{port}"

    def start_service(self, name: str, wait: bool = True, timeout: float = 180.0) -> ManagedProcess:
        """Start `python -m services.<name>`; wait for gRPC SERVING (the gateway speaks HTTP: no wait)."""
        self.reserve_ports((name,))
        address = self.env[PORT_VARS[name][1]]
        argv = [sys.executable, "-m", f"services.{name}"]
        env = self.process_env(name)
        env["PROMETHEUS_MULTIPROC_DIR"] = UNSET  # one process: its own registry
        managed = self.add(start_process(name, argv, env, self.log_dir, address))
        if wait:
            wait_serving(managed, timeout, self.client_tls())
        return managed

    def start_gateway(
        self,
        name: str = "gateway",
        extra_env: dict[str, str] | None = None,
        ready_path: str | None = "/healthz",
        timeout: float = 60.0,
    ) -> ManagedProcess:
        """The studio gateway (`python -m services.gateway`); waits until `ready_path` answers 200.

        extra_env overrides the suite's variables for this process only (a second gateway on its
        own GATEWAY_PORT, or one pointed at other backends)."""
        env = {**self.env, **(extra_env or {})}
        if "GATEWAY_PORT" not in env:
            self.reserve_ports(("gateway",))
            env = {**self.env, **(extra_env or {})}
        argv = [sys.executable, "-m", "services.gateway"]
        env = self.process_env(name, env)
        env["PROMETHEUS_MULTIPROC_DIR"] = UNSET
        managed = self.add(start_process(name, argv, env, self.log_dir, env["GATEWAY_ADDR"]))
        if ready_path is not None:
            wait_http(f"http://{env['GATEWAY_ADDR']}{ready_path}", managed, timeout)
        return managed

    def start_worker(
        self,
        name: str,
        concurrency: int = 1,
        app: str = "services.encoder.tasks",
        queues: str | None = None,
    ) -> ManagedProcess:
        argv = celery_worker_argv(concurrency, name, app, queues)
        return self.add(start_process(name, argv, self.process_env(name), self.log_dir))

    def encode(self, request, timeout: float = 300.0):
        """Submit a catalogue job (an encoder_pb2.SubmitCatalogueRequest) and wait until it
        succeeds; returns the finished Job (a failed job raises)."""
        from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc

        with self.channel("encoder") as channel:
            stub = encoder_pb2_grpc.EncoderServiceStub(channel)
            job = stub.SubmitCatalogue(request, timeout=60)
            deadline = time.monotonic() + timeout
            while job.state != common_pb2.JOB_STATE_SUCCEEDED:
                if job.state == common_pb2.JOB_STATE_FAILED or time.monotonic() > deadline:
                    raise RuntimeError(f"catalogue job {job.job_id} did not succeed: {job}")
                time.sleep(0.2)
                job = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=5)
        return job

    def start_personalization(self, timeout: float = 180.0) -> ManagedProcess:
        """The personalization service with its import and training workers."""
        for name, (app, queue) in PERSONALIZATION_WORKERS.items():
            self.start_worker(name, app=app, queues=queue)
        return self.start_service("personalization", timeout=timeout)


def _revoke_quietly(tokens: TokenStore, name: str) -> None:
    try:
        tokens.revoke(name)
    except redis.RedisError:
        log.warning("could not revoke the suite's token %s (Redis gone)", name)


@contextmanager
def local_suite(
    work_dir: Path,
    models_dir: Path,
    redis_url: str | None = None,
    workers: int = 1,
    services: tuple[str, ...] = ("modelserver", "encoder"),
    extra_env: dict[str, str] | None = None,
    auth: bool = True,
    restart: bool = False,
    redis_appendfsync: str = "everysec",
    metrics: bool = True,
) -> Iterator[Suite]:
    """Redis (embedded unless redis_url is given), the model server, services and Celery workers.

    auth=True: bearer tokens are checked, with an admin token made for this suite (revoked when it
    stops); auth=False: ATELIER_AUTH=none, which the services accept on loopback only.

    Query services (decoder, retrieval, recommender) become SERVING only once a generation is
    served, so callers usually start them with `suite.start_service` after encoding. The embedded
    Redis is `suite.processes["redis"]`, with AOF (`redis_appendfsync`, compose's everysec by
    default). `restart=True` restarts any process that dies, like compose's `unless-stopped`.
    Every process serves /metrics on a free port (`suite.metrics_addresses`) unless metrics=False.
    """
    work_dir = Path(work_dir)
    suite = Suite(
        env={
            "ATELIER_LOG_DIR": str(work_dir / "logs"),
            "MODELS_DIR": str(Path(models_dir).resolve()),
        },
        restart=restart,
        metrics=metrics,
    )
    with suite.stack:
        if redis_url is None:
            redis_server = suite.add(start_supervised_redis(work_dir / "redis", redis_appendfsync))
            redis_url = f"redis://{redis_server.address}/0"
        suite.env["REDIS_URL"] = redis_url
        if auth:
            tokens = TokenStore.from_url(redis_url)
            name = f"launcher-{os.getpid()}-{free_port()}"
            suite.env["ATELIER_AUTH"] = "token"
            suite.env["ATELIER_TOKEN"] = tokens.create(name, Role.ADMIN)
            suite.stack.callback(_revoke_quietly, tokens, name)
        else:
            suite.env["ATELIER_AUTH"] = "none"
            suite.env["ATELIER_TOKEN"] = ""
        suite.env.update(extra_env or {})
        suite.reserve_ports(tuple(PORT_VARS))
        for name in services:
            suite.start_service(name)
        for index in range(workers):
            suite.start_worker(f"worker{index + 1}")
        yield suite
