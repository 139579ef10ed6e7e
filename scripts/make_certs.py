"""Make a private CA, one server certificate for the whole suite, and a client certificate.

    python scripts/make_certs.py deploy/certs

writes ca.pem, server.pem, server-key.pem, client.pem, client-key.pem. The server certificate
names every compose service, localhost and 127.0.0.1, so the same files serve every gRPC server,
the gateway's HTTPS and Redis's TLS port (deploy/compose.tls.yml). For a real deployment, use
certificates from your own CA; these are for trying TLS out and for the tests.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SUITE_NAMES = (
    "localhost",
    "127.0.0.1",
    "redis",
    "modelserver",
    "encoder",
    "decoder",
    "retrieval",
    "recommender",
    "personalization",
    "gateway",
)


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, readable: bool) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o644 if readable else 0o600)


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    days: int,
    *,
    ca: bool = False,
    names: tuple[str, ...] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(n) for n in names]), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certs(
    out_dir: Path,
    names: tuple[str, ...] = SUITE_NAMES,
    client_name: str = "atelier-client",
    days: int = 825,
    ca_name: str = "Atelier private CA",
    readable_keys: bool = False,
) -> CertFiles:
    """A fresh CA in out_dir, a server certificate for `names` and a client certificate.
    Keys are owner-only, unless `readable_keys` (containers run as other users than you)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = CertFiles(
        out_dir / "ca.pem",
        out_dir / "server.pem",
        out_dir / "server-key.pem",
        out_dir / "client.pem",
        out_dir / "client-key.pem",
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(ca_name, ca_key, _name(ca_name), ca_key, days, ca=True)
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, subject, san, usage in (
        (files.server_cert, files.server_key, names[0], names, ExtendedKeyUsageOID.SERVER_AUTH),
        (files.client_cert, files.client_key, client_name, (), ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, ca_cert.subject, ca_key, days, names=tuple(san), usage=usage)
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key, readable_keys)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--name",
        action="append",
        default=None,
        help="a DNS name or IP the server certificate is valid for (repeat; default: the suite's)",
    )
    parser.add_argument(
        "--readable-keys",
        action="store_true",
        help="keys readable by every user (for mounting into containers on a machine of your own)",
    )
    args = parser.parse_args()
    files = make_certs(
        args.out_dir,
        tuple(args.name) if args.name else SUITE_NAMES,
        readable_keys=args.readable_keys,
    )
    print(f"wrote {files.ca}, {files.server_cert} (+key), {files.client_cert} (+key)")


if __name__ == "__main__":
    main()
