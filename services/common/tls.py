"""Transport security for every gRPC server and channel of the suite, from certificate paths in env.

Servers (through `runtime.grpc_server`): TLS when `TLS_CERT_FILE` and `TLS_KEY_FILE` are set;
mutual TLS (client certificates required) when `TLS_CLIENT_CA_FILE` is set too.

Clients (`make_channel`): TLS when `TLS_CA_FILE` (the CA that signed the servers' certificates)
or a client certificate is set; `TLS_CLIENT_CERT_FILE` / `TLS_CLIENT_KEY_FILE` answer mutual TLS;
`TLS_SERVER_NAME` is the name checked against the server's certificate when the address does not
carry it (an IP address, or one name for every service).
"""

from __future__ import annotations

import functools
import json
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common import tracing

MAX_MESSAGE_BYTES = 32 * 1024 * 1024
MESSAGE_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
# A restarted server is reconnected to within 2 s: gRPC's default backoff grows to 120 s, which
# keeps a client failing long after its server is back (the chaos benchmark measured it).
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)
# gRPC's own retries (gRFC A6): RESOURCE_EXHAUSTED is retried a bounded number of times, waiting
# what the server's `grpc-retry-pushback-ms` trailer says (services/common/backpressure.py), else
# an exponential backoff. Calls are retried only while they are within their deadline.
OVERLOAD_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["RESOURCE_EXHAUSTED"],
                },
            }
        ]
    }
)


def _path(env: Mapping[str, str], name: str) -> Path | None:
    value = env.get(name) or ""
    return Path(value) if value else None


@functools.lru_cache(maxsize=32)
def _read(path: Path, variable: str) -> bytes:
    # Read once per process (a rotated certificate needs a restart); the message names the
    # variable and the path, never what is in the file.
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SystemExit(f"{variable}: cannot read {path}: {exc.strerror}") from None


@dataclass(frozen=True)
class ServerTLS:
    """A server's certificate and key, and the CA its clients' certificates must chain to (mTLS)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerTLS:
        env = os.environ if env is None else env
        tls = cls(
            _path(env, "TLS_CERT_FILE"),
            _path(env, "TLS_KEY_FILE"),
            _path(env, "TLS_CLIENT_CA_FILE"),
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            raise SystemExit("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        if tls.client_ca_file is not None and tls.cert_file is None:
            raise SystemExit("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        return tls

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None and self.key_file is not None

    @property
    def mutual(self) -> bool:
        return self.enabled and self.client_ca_file is not None

    def describe(self) -> str:
        return "mutual TLS" if self.mutual else "TLS" if self.enabled else "plaintext"

    def credentials(self) -> grpc.ServerCredentials:
        assert self.cert_file is not None and self.key_file is not None
        client_ca = (
            _read(self.client_ca_file, "TLS_CLIENT_CA_FILE") if self.client_ca_file else None
        )
        return grpc.ssl_server_credentials(
            [(_read(self.key_file, "TLS_KEY_FILE"), _read(self.cert_file, "TLS_CERT_FILE"))],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclass(frozen=True)
class ClientTLS:
    """How a client checks servers, and the certificate it shows them. No files: plaintext."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientTLS:
        env = os.environ if env is None else env
        tls = cls(
            _path(env, "TLS_CA_FILE"),
            _path(env, "TLS_CLIENT_CERT_FILE"),
            _path(env, "TLS_CLIENT_KEY_FILE"),
            env.get("TLS_SERVER_NAME") or "",
        )
        if (tls.cert_file is None) != (tls.key_file is None):
            raise SystemExit("TLS_CLIENT_CERT_FILE and TLS_CLIENT_KEY_FILE must be set together")
        return tls

    @property
    def enabled(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "TLS_CA_FILE") if self.ca_file else None,
            private_key=_read(self.key_file, "TLS_CLIENT_KEY_FILE") if self.key_file else None,
            certificate_chain=(
                _read(self.cert_file, "TLS_CLIENT_CERT_FILE") if self.cert_file else None
            ),
        )


def make_channel(
    address: str,
    tls: ClientTLS | None = None,
    *,
    round_robin: bool = False,
    retry_overload: bool = False,
    options: Sequence[tuple[str, object]] = (),
) -> grpc.Channel:
    """A channel to `address` with the suite's message limits: TLS or plaintext as `tls` says
    (None: from the environment), round robin over every address a `dns:///name:port` resolves
    to, and bounded retries of RESOURCE_EXHAUSTED that honour the server's retry hint; traced
    when this process records spans (services/common/tracing.py)."""
    tls = ClientTLS.from_env() if tls is None else tls
    all_options: list[tuple[str, object]] = [*MESSAGE_OPTIONS, *RECONNECT_OPTIONS, *options]
    if round_robin:
        all_options.append(("grpc.lb_policy_name", "round_robin"))
    if retry_overload:
        all_options.append(("grpc.service_config", OVERLOAD_RETRY_SERVICE_CONFIG))
    if not tls.enabled:
        return tracing.traced_channel(grpc.insecure_channel(address, options=all_options))
    if tls.server_name:
        all_options.append(("grpc.ssl_target_name_override", tls.server_name))
    return tracing.traced_channel(
        grpc.secure_channel(address, tls.credentials(), options=all_options)
    )


def https_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server-side TLS context for the gateway's HTTPS (TLS 1.2 or newer)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(
            f"GATEWAY_TLS_CERT_FILE / GATEWAY_TLS_KEY_FILE: cannot load {cert_file}, {key_file}: "
            f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}"
        ) from None
    return context
