"""Start the services the way docker-compose does: each image target's CMD with compose's environment.

There is no Docker engine here, so this reads docker-compose.yml and deploy/Dockerfile, swaps
container host names for loopback ports, and runs the very commands the images would run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from atelier.modelinfo import model_versions
from atelier.processes import free_port, start_redis
from atelier.store import CodeStore
from atelier.v1 import common_pb2, retrieval_pb2, retrieval_pb2_grpc
from services.common.auth import with_token
from services.common.fanout import ShardedRetrieval
from services.common.launcher import ManagedProcess, start_process, wait_serving
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
        if match := re.match(r"FROM \S+ AS (\w+)", line):
            current = targets.setdefault(match.group(1), {"env": {}, "cmd": None})
        elif current is not None and line.startswith("ENV "):
            current["env"].update(dict(pair.split("=", 1) for pair in line[4:].split()))
        elif current is not None and line.startswith("CMD "):
            current["cmd"] = json.loads(line[4:])
    return targets


def test_compose_file_is_valid_for_docker_compose():
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (CI installs Debian's docker-compose)")
    subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, check=True, timeout=60)


class RecordingEnviron(dict):
    """An os.environ stand-in that remembers which variables were asked for."""

    def __init__(self, values):
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key, default=None):
        self.asked.add(key)
        return super().get(key, default)


def _secrets(directory: Path) -> dict[str, str]:
    """What compose's init-secrets generates, in a local folder: container path -> local path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "redis-password").write_text(REDIS_PASSWORD)
    return {"/secrets": str(directory)}


def test_every_compose_variable_is_read_by_its_service(monkeypatch, tmp_path):
    import importlib

    compose, secrets = _compose(), _secrets(tmp_path / "secrets")
    for name, package in PACKAGES.items():
        environment = {k: str(v) for k, v in compose[name]["environment"].items()}
        for key, value in environment.items():
            for container, local in secrets.items():
                environment[key] = value.replace(container, local)
        recording = RecordingEnviron(environment)
        monkeypatch.setattr(os, "environ", recording)
        settings = importlib.import_module(f"services.{package}.config").Settings.from_env()
        monkeypatch.undo()
        assert settings is not None
        unread = (
            set(environment) - recording.asked - {"LOG_LEVEL"}
        )  # LOG_LEVEL: read by configure_logging
        assert not unread, f"{name}: compose sets {sorted(unread)}, which the service never reads"
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
            if key.endswith("_PORT") and name in ports:
                env[key] = str(ports[name])
        env["MODELS_DIR"] = str(models_dir)
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
