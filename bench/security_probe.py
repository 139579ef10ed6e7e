"""Probe authentication on a running suite: every RPC of every service, and every gateway route.

    python -m bench.security_probe [--catalogue tests/fixtures/fashion-product-tiny/styles.csv]

Starts the suite with authentication on (services/common/launcher.py), encodes a few catalogue
items so every service is SERVING, then calls each method found in the atelier.v1 service
descriptors with an empty request:

- unauthenticated: no token, a garbage token, a malformed header, and a token revoked after it
  had been used (and cached), once the cache TTL has passed. Each must get UNAUTHENTICATED.
- wrong role: a token of every role below the method's. Each must get PERMISSION_DENIED.
- the method's own role, as a control: it must get past the check (any other status).

The gateway's /api/ routes get the same attempts (401 and 403 expected). Writes the `auth`
section of docs/reliability.json and docs/reliability.md; exits 1 if anything got through.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import pkgutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc

import atelier.v1
from atelier.auth import Role, TokenStore
from atelier.catalogue import read_catalogue_csv
from atelier.v1 import common_pb2, encoder_pb2, encoder_pb2_grpc
from bench import report
from services.common.auth import METHOD_ROLES
from services.common.launcher import Suite, local_suite, start_process
from services.common.tls import make_channel
from services.gateway.server import ROUTE_ROLES

log = logging.getLogger("bench.security_probe")
ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "fashion-product-tiny" / "styles.csv"
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass
class Tally:
    tried: int = 0
    rejected: int = 0
    missed: list[str] = field(default_factory=list)

    def record(self, ok: bool, what: str) -> None:
        self.tried += 1
        self.rejected += ok
        if not ok:
            self.missed.append(what)

    @property
    def share(self) -> float:
        return self.rejected / self.tried if self.tried else 0.0


def every_method() -> list[tuple[str, object]]:
    """(full method name, method descriptor) of every Atelier RPC, from the generated stubs."""
    methods = []
    for module in sorted(pkgutil.iter_modules(atelier.v1.__path__), key=lambda m: m.name):
        if module.name.endswith("_pb2"):
            descriptor = importlib.import_module(f"atelier.v1.{module.name}").DESCRIPTOR
            for service in descriptor.services_by_name.values():
                methods += [(f"/{service.full_name}/{m.name}", m) for m in service.methods]
    return methods


def address_of(suite: Suite, method: str) -> str:
    service = method.split("/")[1].rsplit(".", 1)[1]  # atelier.v1.EncoderService -> Encoder...
    return suite.env[f"{service.removesuffix('Service').upper()}_ADDR"]


def call(channel: grpc.Channel, method: str, descriptor, metadata) -> grpc.StatusCode:
    request_class = message_factory.GetMessageClass(descriptor.input_type)
    response_class = message_factory.GetMessageClass(descriptor.output_type)
    rpc = channel.unary_unary(
        method,
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    try:
        rpc(request_class(), timeout=30, metadata=metadata)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def http(port: int, method: str, path: str, headers: dict[str, str]) -> int:
    body = b"{}" if method == "POST" else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method=method, headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def start(suite: Suite, csv_path: Path, items: int) -> int:
    """Encode `items` catalogue items inline, serve them, start the query services and gateway."""
    entries = [
        encoder_pb2.CatalogueEntry(
            item=common_pb2.Item(
                item_id=item.item_id,
                sub_category=item.sub_category,
                master_category=item.master_category,
                gender=item.gender,
            ),
            image=item.image_path.read_bytes(),
        )
        for item in read_catalogue_csv(csv_path)[:items]
    ]
    with suite.channel("encoder") as channel:
        stub = encoder_pb2_grpc.EncoderServiceStub(channel)
        job = stub.SubmitCatalogue(
            encoder_pb2.SubmitCatalogueRequest(
                entries=encoder_pb2.CatalogueEntries(entries=entries)
            ),
            timeout=120,
        )
        deadline = time.monotonic() + 600
        while job.state != common_pb2.JOB_STATE_SUCCEEDED:
            if time.monotonic() > deadline or job.state == common_pb2.JOB_STATE_CANCELLED:
                raise SystemExit(f"encoding the probe's items did not finish: {job}")
            time.sleep(0.3)
            job = stub.GetJob(encoder_pb2.GetJobRequest(job_id=job.job_id), timeout=10)
        stub.ServeGeneration(
            encoder_pb2.ServeGenerationRequest(model_version=job.model_version), timeout=30
        )
    for name in ("decoder", "retrieval", "recommender"):
        suite.start_service(name, timeout=600)
    suite.add(
        start_process(
            "gateway", [sys.executable, "-m", "services.gateway"], suite.env, suite.log_dir
        )
    )
    from services.demo import wait_http

    wait_http(f"http://127.0.0.1:{suite.env['GATEWAY_PORT']}/healthz")
    return job.model_version


def probe(suite: Suite, cache_seconds: float) -> dict:
    tokens = TokenStore.from_url(suite.env["REDIS_URL"])
    by_role = {role: tokens.create(f"probe-{role.label}", role) for role in Role}
    methods = every_method()
    addresses = sorted({address_of(suite, m) for m, _ in methods})
    channels = {address: make_channel(address, suite.client_tls()) for address in addresses}
    gateway_port = int(suite.env["GATEWAY_PORT"])

    # A token that worked (and sits in every cache) before it was revoked.
    revoked = tokens.create("probe-revoked", Role.ADMIN)
    for method, descriptor in methods:
        call(channels[address_of(suite, method)], method, descriptor, bearer(revoked))
    for method_name, path in ROUTE_ROLES:
        http(gateway_port, method_name, path.replace("/image/", "/image/1164"), _auth(revoked))
    tokens.revoke("probe-revoked")
    time.sleep(cache_seconds + 1.0)

    unauthenticated = {
        "no token": [],
        "garbage token": bearer("garbage-" + "x" * 40),
        "malformed header": [("authorization", f"Basic {by_role[Role.ADMIN]}")],
        "revoked token": bearer(revoked),
    }
    rpc_unauth, rpc_role, rpc_control = Tally(), Tally(), Tally()
    for method, descriptor in methods:
        channel = channels[address_of(suite, method)]
        for attempt, metadata in unauthenticated.items():
            code = call(channel, method, descriptor, metadata)
            rpc_unauth.record(
                code == grpc.StatusCode.UNAUTHENTICATED, f"{method} ({attempt}): {code.name}"
            )
        needed = METHOD_ROLES.get(method)  # unmapped: no role may call it
        for role in Role:
            code = call(channel, method, descriptor, bearer(by_role[role]))
            if needed is None or role < needed:
                rpc_role.record(
                    code == grpc.StatusCode.PERMISSION_DENIED,
                    f"{method} ({role.label}): {code.name}",
                )
            elif role == needed:
                rpc_control.record(code not in REFUSED, f"{method} ({role.label}): {code.name}")
    open_health = all(
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(), timeout=10)
        .status
        == health_pb2.HealthCheckResponse.SERVING
        for channel in channels.values()
    )
    for channel in channels.values():
        channel.close()

    http_unauth, http_role, http_control = Tally(), Tally(), Tally()
    http_attempts = {
        "no token": {},
        "garbage token": _auth("garbage-" + "x" * 40),
        "malformed header": {"Authorization": f"Basic {by_role[Role.ADMIN]}"},
        "revoked token": _auth(revoked),
    }
    for (verb, route), needed in ROUTE_ROLES.items():
        path = route.replace("/image/", "/image/1164")
        for attempt, headers in http_attempts.items():
            status = http(gateway_port, verb, path, headers)
            http_unauth.record(status == 401, f"{verb} {path} ({attempt}): {status}")
        for role in Role:
            status = http(gateway_port, verb, path, _auth(by_role[role]))
            if role < needed:
                http_role.record(status == 403, f"{verb} {path} ({role.label}): {status}")
            elif role == needed:
                http_control.record(
                    status not in (401, 403), f"{verb} {path} ({role.label}): {status}"
                )
    open_pages = all(http(gateway_port, "GET", p, {}) == 200 for p in ("/", "/healthz"))
    for role in Role:
        tokens.revoke(f"probe-{role.label}")

    return {
        "unauthenticated_rejected": round(rpc_unauth.share, 4),
        "unauthenticated_tried": rpc_unauth.tried,
        "wrong_role_rejected": round(rpc_role.share, 4),
        "wrong_role_tried": rpc_role.tried,
        "right_role_admitted": round(rpc_control.share, 4),
        "right_role_tried": rpc_control.tried,
        "methods": len(methods),
        "services": len({m.split("/")[1] for m, _ in methods}),
        "not_rejected": rpc_unauth.missed + rpc_role.missed,
        "not_admitted": rpc_control.missed,
        "health_open_without_token": open_health,
        "gateway": {
            "unauthenticated_rejected": round(http_unauth.share, 4),
            "unauthenticated_tried": http_unauth.tried,
            "wrong_role_rejected": round(http_role.share, 4),
            "wrong_role_tried": http_role.tried,
            "right_role_admitted": round(http_control.share, 4),
            "routes": len(ROUTE_ROLES),
            "not_rejected": http_unauth.missed + http_role.missed,
            "not_admitted": http_control.missed,
            "page_and_healthz_open": open_pages,
        },
        "token_cache_seconds": cache_seconds,
    }


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--catalogue", type=Path, default=FIXTURE)
    parser.add_argument("--items", type=int, default=40, help="catalogue items to encode")
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument(
        "--cache-seconds", type=float, default=2.0, help="the services' token cache TTL"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = "python -m bench.security_probe " + " ".join(sys.argv[1:])
    env = {
        "ATELIER_AUTH_CACHE_SECONDS": str(args.cache_seconds),
        "KMEANS_K": "2",
        "GATEWAY_IMAGE_ROOT": str(args.catalogue.resolve().parent),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        local_suite(Path(tmp), args.models, workers=1, extra_env=env) as suite,
    ):
        start(suite, args.catalogue, args.items)
        figures = probe(suite, args.cache_seconds)
    figures["notes"] = (
        "Every RPC of every atelier.v1 service (from the descriptors) with an empty request: no "
        "token, a garbage token, a Basic header and a revoked token (used, cached, revoked, then "
        "tried after the cache TTL) must get UNAUTHENTICATED; every role below the method's must "
        "get PERMISSION_DENIED; the method's own role must get past the check. The gateway's /api/ "
        "routes likewise (401, 403)."
    )
    report.update("auth", figures, command, report="reliability")
    print(json.dumps(figures, indent=1))
    gateway = figures["gateway"]
    clean = not (
        figures["not_rejected"]
        or figures["not_admitted"]
        or gateway["not_rejected"]
        or gateway["not_admitted"]
    )
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
