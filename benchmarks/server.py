"""Load the budget service from a second process: requests per second, latency, lost updates.

Starts ``budgetguard serve`` in its own process on a free loopback port, then
20 client threads here send ``/update_cost`` charges of $0.01 over keep-alive
connections, each with a bearer token, and the total is read back: every
charge must be there, to the cent.

    PYTHONPATH=$PWD python benchmarks/server.py [--ledger URL] [--clients 20] [--requests 250]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal

TOKEN = "benchmark-admin-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post(connection: http.client.HTTPConnection, path: str, body: dict[str, object]) -> dict:
    connection.request("POST", path, json.dumps(body), HEADERS)
    response = connection.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}: {data[:200]!r}")
    return json.loads(data)


def _wait(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            _post(connection, "/get_budget", {"project_name": "bench"})
            connection.close()
            return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the server did not start") from None
            time.sleep(0.1)


def main() -> None:
    """Run the load test and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", help="ledger URL (default: a fresh SQLite file)")
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--requests", type=int, default=250, help="requests per client")
    args = parser.parse_args()
    ledger = args.ledger or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "budgetguard", "serve", "--ledger", ledger, "--port", str(port)],
        env={**os.environ, "BUDGETGUARD_TOKEN": TOKEN},
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(port, server)
        setup = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        _post(
            setup,
            "/set_budget",
            {"project_name": "bench", "user_dict": {"u": {"total_budget": 1_000_000}}},
        )
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        start = threading.Barrier(args.clients + 1)

        def client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            mine: list[float] = []
            start.wait()
            for _ in range(args.requests):
                began = time.perf_counter()
                try:
                    _post(
                        connection,
                        "/update_cost",
                        {"project_name": "bench", "user": "u", "cost": "0.01", "model": "m"},
                    )
                except (OSError, RuntimeError) as error:
                    errors.append(str(error))
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    continue
                mine.append(time.perf_counter() - began)
            with lock:
                latencies.extend(mine)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        start.wait()
        began = time.perf_counter()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        # A fresh connection: the setup one idled past the keep-alive timeout.
        setup = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        reply = _post(setup, "/get_budget", {"project_name": "bench", "user": "u"})
        stored = Decimal(str(reply["data"]["u"]["current_cost"]))
        expected = Decimal("0.01") * len(latencies)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"ledger {ledger}, {args.clients} clients x {args.requests} /update_cost")
        print(f"requests ok      {len(latencies)} (errors: {len(errors)})")
        print(f"requests/second  {len(latencies) / elapsed:,.0f}")
        print(f"latency p50      {statistics.median(latencies) * 1000:.1f} ms")
        print(f"latency p99      {p99 * 1000:.1f} ms")
        print(f"stored spend     ${stored} (expected ${expected})")
        print(f"lost updates     {int((expected - stored) / Decimal('0.01'))}")
        if errors:
            print("first error:", errors[0])
        if stored != expected or errors:
            raise SystemExit(1)
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":
    main()
