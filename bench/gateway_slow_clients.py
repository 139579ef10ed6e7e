"""Slow clients against the studio gateway: do 200 slowloris connections hold up anyone else?

    python -m bench.gateway_slow_clients [--clients 200] [--probes 20] [--seconds 45]

Starts the suite as tests/integration/test_studio_browser.py does (bench.studio_roundtrip:
studio_suite; the gateway with its default settings), then opens `--clients` connections on
loopback that each send the start of a request and then one more header byte about every
second, never finishing the head. While they are all connected, `--probes` normal requests of
each kind (GET /api/categories with the suite's token, GET /livez), one after another on fresh
connections, are timed. The slow clients keep trickling until the gateway cuts them off
(GATEWAY_READ_TIMEOUT_SECONDS after they connected: 408 and a close) or `--seconds` pass.

ok: every normal request answered 200 within 1 s. Merges its figures into the `ops` section of
docs/benchmarks.json and .md (gateway_slow_clients_*).
"""

from __future__ import annotations

import argparse
import http.client
import logging
import selectors
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench import report
from bench.studio_roundtrip import studio_suite

log = logging.getLogger("bench.gateway_slow_clients")
NORMAL_LIMIT_MS = 1000.0
TRICKLE_SECONDS = 1.0  # each slow client sends one byte about this often
SLOW_START = b"GET /api/categories HTTP/1.1\r\nHost: bench\r\nX-Slow: "


@dataclass
class SlowClients:
    """Connections that trickle a request head a byte at a time, from one thread."""

    host: str
    port: int
    count: int
    connected_at: dict[socket.socket, float] = field(default_factory=dict)
    cut_off_after: list[float] = field(default_factory=list)  # seconds from connect to close
    answered_408: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def open(self) -> None:
        for _ in range(self.count):
            sock = socket.create_connection((self.host, self.port), timeout=5)
            sock.sendall(SLOW_START)
            sock.setblocking(False)
            self.connected_at[sock] = time.monotonic()

    @property
    def open_now(self) -> int:
        return len(self.connected_at)

    def trickle(self, seconds: float) -> None:
        """One byte per client about every TRICKLE_SECONDS, until all are cut off, `stop` is
        set or `seconds` pass; notes when and how the gateway closed each."""
        selector = selectors.DefaultSelector()
        for sock in self.connected_at:
            selector.register(sock, selectors.EVENT_READ, data=sock)
        clients = list(self.connected_at)
        deadline = time.monotonic() + seconds
        turn = 0
        while self.connected_at and not self.stop.is_set() and time.monotonic() < deadline:
            # A slice of the clients each tick, so the bytes are spread over the second.
            for sock in clients[turn % 10 :: 10]:
                if sock in self.connected_at:
                    try:
                        sock.send(b"a")
                    except OSError:
                        self._closed(selector, sock, b"")
            turn += 1
            for key, _ in selector.select(timeout=TRICKLE_SECONDS / 10):
                sock = key.data
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                self._closed(selector, sock, data)
        for sock in list(self.connected_at):
            self._closed(selector, sock, b"", by_gateway=False)

    def _closed(
        self,
        selector: selectors.BaseSelector,
        sock: socket.socket,
        data: bytes,
        by_gateway: bool = True,
    ) -> None:
        started = self.connected_at.pop(sock, None)
        if started is None:
            return
        if by_gateway:
            self.cut_off_after.append(time.monotonic() - started)
            self.answered_408 += data.startswith(b"HTTP/1.1 408")
        selector.unregister(sock)
        sock.close()


def timed_get(host: str, port: int, path: str, token: str) -> tuple[int, float]:
    """Status and milliseconds of one GET on a fresh connection (status 0: no answer)."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        response.read()
        status = response.status
    except OSError:
        status = 0
    finally:
        connection.close()
    return status, (time.perf_counter() - started) * 1000


def run(host: str, port: int, token: str, clients: int, probes: int, seconds: float) -> dict:
    slow = SlowClients(host, port, clients)
    slow.open()
    trickler = threading.Thread(target=slow.trickle, args=(seconds,), name="slow-clients")
    trickler.start()
    try:
        time.sleep(2 * TRICKLE_SECONDS)  # every slow client has sent a byte after its start
        connected = slow.open_now
        log.info("%d slow clients connected; timing %d normal requests of each kind", connected, probes)  # fmt: skip
        timings: dict[str, list[float]] = {"/api/categories": [], "/livez": []}
        statuses: list[int] = []
        for _ in range(probes):
            for path, times in timings.items():
                status, ms = timed_get(host, port, path, token)
                statuses.append(status)
                times.append(ms)
            time.sleep(0.2)
        still_open = slow.open_now
        trickler.join()  # until the gateway has cut every slow client off, or `seconds` pass
    finally:
        slow.stop.set()
        trickler.join()
    every = [ms for times in timings.values() for ms in times]
    ok = all(status == 200 for status in statuses) and max(every) <= NORMAL_LIMIT_MS
    cut_off = slow.cut_off_after
    return {
        "gateway_slow_clients": clients,
        "gateway_slow_clients_connected_while_timed": min(connected, still_open),
        "gateway_slow_clients_normal_requests": len(every),
        "gateway_slow_clients_normal_max_ms": round(max(every), 1),
        "gateway_slow_clients_normal_p50_ms": round(float(np.percentile(every, 50)), 1),
        "gateway_slow_clients_categories_max_ms": round(max(timings["/api/categories"]), 1),
        "gateway_slow_clients_livez_max_ms": round(max(timings["/livez"]), 1),
        "gateway_slow_clients_ok": ok,
        "gateway_slow_clients_cut_off": len(cut_off),
        "gateway_slow_clients_answered_408": slow.answered_408,
        "gateway_slow_clients_cut_off_after_s": (
            round(float(np.median(cut_off)), 1) if cut_off else None
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--probes", type=int, default=20, help="normal requests of each kind")
    parser.add_argument("--seconds", type=float, default=45.0, help="longest slow-client phase")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    command = "python -m bench.gateway_slow_clients " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as work, studio_suite(Path(work)) as suite:
        host, port = suite.env["GATEWAY_ADDR"].rsplit(":", 1)
        started = time.monotonic()
        figures = run(host, int(port), suite.token or "", args.clients, args.probes, args.seconds)
        log.info("slow-client phase took %.0f s", time.monotonic() - started)
    report.merge("ops", "gateway_slow_clients", figures, command.strip())
    print(figures)
    return 0 if figures["gateway_slow_clients_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
