"""Start the services the way docker-compose does: each image target's CMD with compose's environment.

There is no Docker engine here, so this reads docker-compose.yml and deploy/Dockerfile, swaps
container host names for loopback ports, and runs the very commands the images would run.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import redis
import yaml

from atelier.modelinfo import model_versions
from atelier.processes import free_port, start_redis
from atelier.sharding import Shard
from atelier.store import CodeStore
from atelier.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common.auth import with_token
from services.common.fanout import ShardedRetrieval
from services.common.launcher import ManagedProcess, start_process, wait_serving
from services.common.redisconf import SSL_OPTIONS
from services.common.secrets import DEFAULT_SECRETS
from services.common.settings import variables
from services.common.tls import make_channel

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SHARDS = 3  # compose runs retrieval and the recommender as three shards each
RETRIEVAL = tuple(f"retrieval-{i}" for i in range(SHARDS))
RECOMMENDER = tuple(f"recommender-{i}" for i in range(SHARDS))
SERVICES = (
    "init-secrets",
    "modelserver",
    "encoder",
    "worker",
    "decoder",
    *RETRIEVAL,
    *RECOMMENDER,
    "gateway",
)
GRPC_PORTS = {
    "modelserver": 8500,
    "encoder": 50051,
    "decoder": 50052,
    **{name: 50053 for name in RETRIEVAL},
    **{name: 50054 for name in RECOMMENDER},
}
# Compose service -> the Python package it runs (services.<package>).
PACKAGES = {
    "encoder": "encoder",
    "decoder": "decoder",
    **{name: "retrieval" for name in RETRIEVAL},
    **{name: "recommender" for name in RECOMMENDER},
    "gateway": "gateway",
}
# Compose service -> the package whose `config.Settings` its process reads (workers read their
# service's). The one-shot services run CLI commands (services/cli.py), and redis is Redis's image.
SETTINGS_OF = {
    **PACKAGES,
    "modelserver": "modelserver",
    "worker": "encoder",
    "personalization": "personalization",
    "interactions-worker": "personalization",
    "trainer": "personalization",
}
NOT_PYTHON_SERVICES = {"init-secrets", "bootstrap", "redis"}
# Variables a service reads outside its settings: the shared bootstrap (logging in
# services/common/runtime.py and logs.py, metrics.py, tracing.py with every OTEL_*, and runtime's
# concurrency limit) and transport security (services/common/tls.py, every server and channel).
READ_BY_THE_BOOTSTRAP = {
    "LOG_LEVEL",
    "LOG_FORMAT",
    "METRICS_PORT",
    "METRICS_HOST",
    "PROMETHEUS_MULTIPROC_DIR",
    "MAX_CONCURRENT_RPCS",
}
READ_BY_TLS = {
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "TLS_CLIENT_CA_FILE",
    "TLS_CA_FILE",
    "TLS_CLIENT_CERT_FILE",
    "TLS_CLIENT_KEY_FILE",
    "TLS_SERVER_NAME",
}
# Read with REDIS_URL (services/common/redisconf.py: with_secrets), by whatever reads REDIS_URL.
REDIS_SECRETS = {"REDIS_PASSWORD_FILE", "REDIS_USERNAME", *SSL_OPTIONS}
# Container folders the code reads files from: the service must mount them, unless its process
# reads no files at all (the trainer works from Redis; it shares the personalization settings).
MOUNTED_FOLDERS = {"CATALOGUE_ROOTS", "GATEWAY_IMAGE_ROOT"}
READS_NO_FILES = {"trainer"}
REDIS_PASSWORD = "compose-test-secret"


def _substitute(text: str) -> str:
    return re.sub(
        r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: os.environ.get(m.group(1), m.group(2) or ""), text
    )


def _compose() -> dict:
    return yaml.safe_load(_substitute((ROOT / "docker-compose.yml").read_text()))["services"]


def _dockerfile_targets() -> dict[str, dict]:
    targets: dict[str, dict] = {}
    current = None
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if match := re.match(r"FROM \S+ AS ([\w-]+)", line):
            current = targets.setdefault(
                match.group(1), {"env": {}, "cmd": None, "healthcheck": ""}
            )
        elif current is not None and line.startswith("ENV "):
            current["env"].update(dict(pair.split("=", 1) for pair in line[4:].split()))
        elif current is not None and line.startswith("CMD "):
            current["cmd"] = json.loads(line[4:])
        elif current is not None and line.startswith("HEALTHCHECK "):
            current["healthcheck"] = line
    return targets


def test_compose_file_is_valid_for_docker_compose():
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (CI installs Debian's docker-compose)")
    subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, check=True, timeout=60)


def _secrets(directory: Path) -> dict[str, str]:
    """What compose's init-secrets generates, in a local folder: container path -> local path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "redis-password").write_text(REDIS_PASSWORD)
    return {"/secrets": str(directory)}


def _container_environment(name: str, compose: dict, targets: dict, secrets: dict) -> dict:
    """What the container's process sees: its image's ENV, then compose's `environment`, with
    the secrets volume at a local folder."""
    service = compose[name]
    environment = {
        **targets[service["build"]["target"]]["env"],
        **{k: str(v) for k, v in service["environment"].items()},
    }
    for key, value in environment.items():
        for container, local in secrets.items():
            environment[key] = value.replace(container, local)
    return environment


def _settings_in(environment: dict[str, str], package: str, monkeypatch):
    """The service's settings as its process builds them in exactly `environment`."""
    settings_class = importlib.import_module(f"services.{package}.config").Settings
    with monkeypatch.context() as patch:
        for key in list(os.environ):
            patch.delenv(key)
        for key, value in environment.items():
            patch.setenv(key, value)
        return settings_class.from_env()


def _container_ports(service: dict) -> set[int]:
    """The ports a service offers: published ("host:container") and exposed."""
    published = [str(mapping).rsplit(":", 1)[-1] for mapping in service.get("ports", ())]
    return {int(port) for port in (*published, *map(str, service.get("expose", ())))}


def _healthcheck_port(service: dict, target: dict) -> int | None:
    """The port the service's healthcheck probes (compose's, else its image's HEALTHCHECK)."""
    test = service.get("healthcheck", {}).get("test") or target["healthcheck"]
    probe = re.search(r"127\.0\.0\.1:(\d+)", " ".join(test) if isinstance(test, list) else test)
    return int(probe.group(1)) if probe else None


def _mounts(service: dict) -> set[str]:
    return {str(volume).split(":")[1] for volume in service.get("volumes", ())}


def test_every_compose_variable_is_a_setting_of_its_service(monkeypatch, tmp_path):
    """Compose's environment for each service: every variable it sets is one the service
    declares (or one the shared bootstrap, TLS or Redis code reads), and the settings built from
    it are what compose means: listening on 0.0.0.0 at the port compose probes and exposes,
    calling other services by their compose names and ports, Redis with the generated password,
    each shard its own index."""
    compose, targets, secrets = _compose(), _dockerfile_targets(), _secrets(tmp_path / "secrets")
    assert set(compose) == set(SETTINGS_OF) | NOT_PYTHON_SERVICES
    environments = {
        name: _container_environment(name, compose, targets, secrets) for name in SETTINGS_OF
    }
    built = {
        name: _settings_in(environments[name], package, monkeypatch)
        for name, package in SETTINGS_OF.items()
    }
    for name, package in SETTINGS_OF.items():
        service, settings, environment = compose[name], built[name], environments[name]
        declared = variables(type(settings))
        read_elsewhere = READ_BY_THE_BOOTSTRAP | READ_BY_TLS
        if "REDIS_URL" in declared:
            read_elsewhere |= REDIS_SECRETS
        unread = {
            key
            for key in service["environment"]
            if key not in declared and key not in read_elsewhere and not key.startswith("OTEL_")
        }
        assert not unread, f"{name}: compose sets {sorted(unread)}, which {package} never reads"

        # Each value compose sets is the value the service runs with.
        for variable, field in declared.items():
            if variable not in environment:
                continue
            value = getattr(settings, field)
            if isinstance(value, str | int | float | Path) and variable != "REDIS_URL":
                assert value == type(value)(environment[variable]), (name, variable)
            if variable in MOUNTED_FOLDERS and name not in READS_NO_FILES:
                assert environment[variable] in _mounts(service), (name, variable)
        if "CATALOGUE_ROOTS" in environment:
            assert settings.catalogue_roots.roots == (Path(environment["CATALOGUE_ROOTS"]),)

        # Listening: on every interface, at the port compose probes and offers.
        ports = _container_ports(service)
        if ports:
            assert settings.host == "0.0.0.0", name
            metrics = {int(environment["METRICS_PORT"])} if "METRICS_PORT" in environment else set()
            assert settings.port in ports and ports <= {settings.port, *metrics}, name
            target = targets[service["build"]["target"]]
            assert _healthcheck_port(service, target) == settings.port, name
        if name in ("modelserver", "encoder"):  # the servers that load the models at start
            assert settings.models_dir == Path("/models") and "/models" in _mounts(service)

        # Other services by their compose names, at the ports they listen on; shards in order.
        for variable in sorted(v for v in declared if v.endswith("_ADDR") and v in environment):
            peers = [
                address.removeprefix("dns:///").rsplit(":", 1)
                for address in environment[variable].split(",")
            ]
            assert all(peer in built for peer, _ in peers), (name, variable, peers)
            ports_called = [int(port) for _, port in peers]
            assert ports_called == [built[peer].port for peer, _ in peers], (name, variable)
            if len(peers) > 1:
                shards = [built[peer].shard for peer, _ in peers]
                assert shards == [Shard(i, len(peers)) for i in range(len(peers))], (name, variable)

        # Redis: compose's service with the password init-secrets generated.
        if "REDIS_URL" in declared:
            url = redis.connection.parse_url(settings.redis_url)
            assert (url["host"], url["port"], url.get("password")) == (
                "redis",
                6379,
                REDIS_PASSWORD,
            )
            assert "redis" in compose and settings.auth.redis_url == settings.redis_url

        # Authentication on wherever a service listens; its own token from the secrets volume.
        if hasattr(settings, "auth"):
            assert settings.auth.enabled or not ports, name
            if settings.auth.token_file:
                token_file = Path(settings.auth.token_file)
                assert token_file.parent == Path(secrets["/secrets"])
                assert token_file.stem in DEFAULT_SECRETS, name

    for index in range(SHARDS):
        assert built[RETRIEVAL[index]].shard == Shard(index, SHARDS)
        assert built[RECOMMENDER[index]].shard == Shard(index, SHARDS)
    assert set(SERVICES) <= set(compose)
    for name in PACKAGES:
        assert all(
            dep["condition"] in ("service_healthy", "service_completed_successfully")
            for dep in compose[name]["depends_on"].values()
        )


def test_services_start_from_their_image_commands(tmp_path, models_dir, tiny_csv):
    compose, targets = _compose(), _dockerfile_targets()
    # Redis asks for the password compose generates, as compose's redis does.
    redis_server = start_redis(tmp_path / "redis", password=REDIS_PASSWORD)
    ports = {name: free_port() for name in (*GRPC_PORTS, "gateway")}
    secrets = tmp_path / "secrets"
    hosts = {
        "redis:6379": f"127.0.0.1:{redis_server.port}",
        **{f"{n}:{p}": f"127.0.0.1:{ports[n]}" for n, p in GRPC_PORTS.items()},
        **_secrets(secrets),  # the secrets volume
    }
    started: list[ManagedProcess] = []

    def compose_env(name: str, image_env: dict[str, str]) -> dict[str, str]:
        env = {
            **image_env,
            **{k: str(v) for k, v in (compose[name].get("environment") or {}).items()},
        }
        for key, value in list(env.items()):
            for container, local in hosts.items():
                value = value.replace(container, local)
            if value == "/catalogue":  # the catalogue volume: the fixtures folder here
                value = str(tiny_csv.parent.parent)
            env[key] = value
        return env

    def one_shot(name: str) -> tuple[list[str], dict[str, str]]:
        """A one-shot service's command, as argv for this Python, and its environment, with the
        volumes mapped."""
        mounts = {
            "/catalogue/sample-catalogue/styles.csv": str(tiny_csv),
            "/models": str(models_dir),
        }
        command = []
        for arg in compose[name]["command"]:
            arg = mounts.get(arg, arg)
            for container, local in hosts.items():
                arg = arg.replace(container, local)
            command.append(arg)
        assert command[0] == "atelier"
        argv = [sys.executable, "-m", "services.cli", *command[1:]]
        return argv, {**os.environ, **compose_env(name, {})}

    def launch(name: str) -> ManagedProcess:
        target = compose[name]["build"]["target"]
        env = compose_env(name, targets[target]["env"])
        for key, value in list(env.items()):
            if key.endswith("_HOST"):
                value = "127.0.0.1"  # tests bind loopback only
            env[key] = value
        for key in env:
            if key == "METRICS_PORT":
                env[key] = str(free_port())  # compose's 9100 is per container
            elif key.endswith("_PORT") and name in ports:
                env[key] = str(ports[name])
        env["MODELS_DIR"] = str(models_dir)
        if "PROMETHEUS_MULTIPROC_DIR" in env:  # in the container's own /tmp: one per process here
            env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / f"metrics-{name}")
            Path(env["PROMETHEUS_MULTIPROC_DIR"]).mkdir(exist_ok=True)
        argv = list(targets[target]["cmd"])
        argv = [sys.executable, *argv[1:]] if argv[0] == "python" else [sys.executable, "-m", *argv]
        if argv[2] == "celery":
            argv += ["--hostname", f"compose-{free_port()}@%h"]
        managed = start_process(
            name, argv, env, tmp_path / "logs", f"127.0.0.1:{ports.get(name, 0)}"
        )
        started.append(managed)
        return managed

    try:
        # init-secrets, as compose runs it: the suite's tokens as 0400 files; a re-run keeps them.
        # (The Redis password is already in the folder, as Redis here started first: kept.)
        argv, env = one_shot("init-secrets")
        made = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert made.returncode == 0, made.stdout + made.stderr
        assert "redis-password: kept" in made.stdout, made.stdout
        assert (secrets / "redis-password").read_text().strip() == REDIS_PASSWORD
        files = sorted(secrets.glob("*.token"))
        assert {f.name for f in files} == {
            "admin.token",
            "retrieval.token",
            "recommender.token",
            "personalization.token",
        }
        assert all(f.stat().st_mode & 0o777 == 0o400 for f in files)
        before = {f.name: f.read_text() for f in files}
        again = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
        assert again.returncode == 0 and again.stdout.count(": kept") == 5, again.stdout
        assert {f.name: f.read_text() for f in files} == before
        for name in ("modelserver", "encoder"):
            wait_serving(launch(name), timeout=300)
        launch("worker")
        # The bootstrap, as compose runs it: roll out the newest model version and serve it.
        argv, env = one_shot("bootstrap")
        assert argv[3] == "encode"
        first = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        newest = model_versions(models_dir)[-1]
        store = CodeStore.from_url(redis_server.url)
        assert store.served_version() == newest and store.item_count(newest) == 300
        again = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        assert again.returncode == 0 and "already served" in again.stdout
        launched = [launch(name) for name in ("decoder", *RETRIEVAL, *RECOMMENDER)]
        for managed in launched:
            wait_serving(managed, timeout=300)
        gateway = launch("gateway")
        from services.demo import wait_http

        wait_http(f"http://127.0.0.1:{ports['gateway']}/healthz")
        assert gateway.process.poll() is None
        request = retrieval_pb2.SearchRequest(query=common_pb2.Query(item_id="1164"), k=3)
        with make_channel(f"127.0.0.1:{ports[RETRIEVAL[0]]}") as channel:
            with pytest.raises(grpc.RpcError) as refused:
                retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(request, timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # Each shard answers for its own index; the client fans out to all three and merges.
        admin_token = (secrets / "admin.token").read_text().strip()
        channels = [
            with_token(make_channel(f"127.0.0.1:{ports[name]}"), admin_token) for name in RETRIEVAL
        ]
        shards = ShardedRetrieval([retrieval_pb2_grpc.RetrievalServiceStub(c) for c in channels])
        try:
            for index, channel in enumerate(channels):
                own = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(request, timeout=10)
                assert (own.shard_count, list(own.shards)) == (SHARDS, [index])
            reply = shards.Search(request, timeout=10)
            assert len(reply.results) == 3 and list(reply.shards) == list(range(SHARDS))
            # A query by photo: each shard calls the encoder with its own token from the volume.
            photo = common_pb2.Query(image=(tiny_csv.parent / "images" / "1164.jpg").read_bytes())
            reply = shards.Search(retrieval_pb2.SearchRequest(query=photo, k=3), timeout=30)
            assert len(reply.results) == 3
        finally:
            for channel in channels:
                channel.close()
    finally:
        for managed in reversed(started):
            managed.stop()
        redis_server.stop()
