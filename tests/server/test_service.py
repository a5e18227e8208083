"""The budget service: authentication, request checks, the APIs, the hosted client, startup."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import pytest

from budgetguard import BudgetManager
from budgetguard.errors import ConfigurationError, StorageError
from budgetguard.server import RunningServer, ServerConfig, Tokens, start

from .conftest import ADMIN, READ, call

pytestmark = pytest.mark.timeout(120)


def _charge(service: RunningServer, cost: str = "1.5", user: str = "alice") -> None:
    reply = call(service.url + "/v1/spend", "POST", {"user": user, "cost": cost, "model": "m"})
    assert reply.status == 200, reply.body


def _alice(service: RunningServer) -> Decimal:
    return service.guard.spend("alice")


# -- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/budgets", "/v1/report", "/v1/health", "/nowhere"])
def test_every_route_needs_a_token(service: RunningServer, path: str) -> None:
    """Without a token every route, even an unknown one, answers 401 with a Bearer challenge."""
    reply = call(service.url + path, token=None)
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/update_cost", {"project_name": "p", "user": "u", "cost": "1"}),
        ("/set_budget", {"project_name": "p", "user_dict": {"u": {"total_budget": 99}}}),
        ("/v1/spend", {"user": "alice", "cost": "1"}),
    ],
)
def test_admin_routes_refuse_missing_wrong_and_read_tokens(
    service: RunningServer, path: str, body: dict[str, object]
) -> None:
    """No token and a wrong token get 401, a read-only token 403; nothing changes."""
    service.guard.set_budget(10, user="alice")
    assert call(service.url + path, "POST", body, token=None).status == 401
    assert call(service.url + path, "POST", body, token="x" * 26).status == 401
    assert call(service.url + path, "POST", body, token=READ).status == 403
    reply = call(service.url + "/v1/budgets", "PUT", {"limit": "1", "user": "u"}, token=READ)
    assert reply.status == 403
    assert _alice(service) == 0
    assert call(service.url + "/get_budget", "POST", {"project_name": "p"}, token=READ).json() == {
        "status": "success",
        "data": {},
    }


def test_read_token_reads(service: RunningServer) -> None:
    """A read-only token sees budgets and reports."""
    service.guard.set_budget(10, user="alice")
    _charge(service)
    reply = call(service.url + "/v1/budgets", token=READ)
    assert reply.status == 200
    [row] = reply.json()["data"]
    assert (row["user"], row["limit"], row["spent"], row["remaining"]) == ("alice", 10, 1.5, 8.5)


# -- CSRF and DNS rebinding -----------------------------------------------------------------


def test_cross_site_form_post_is_refused(service: RunningServer) -> None:
    """A text/plain or form POST (what a hostile page can send) gets 415 and changes nothing."""
    service.guard.set_budget(10, user="alice")
    body = json.dumps({"user": "alice", "cost": "5"}).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        reply = call(service.url + "/v1/spend", "POST", body, headers={"Content-Type": kind})
        assert reply.status == 415, kind
    assert _alice(service) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ],
)
def test_foreign_origins_are_refused(service: RunningServer, headers: dict[str, str]) -> None:
    """A POST from another origin gets 403 even with JSON and a token; nothing changes."""
    service.guard.set_budget(10, user="alice")
    reply = call(service.url + "/v1/spend", "POST", {"user": "alice", "cost": "5"}, headers=headers)
    assert reply.status == 403
    assert _alice(service) == 0


def test_same_origin_post_passes(service: RunningServer) -> None:
    """A POST whose Origin is the service itself is served."""
    service.guard.set_budget(10, user="alice")
    reply = call(
        service.url + "/v1/spend",
        "POST",
        {"user": "alice", "cost": "1"},
        headers={"Origin": service.url},
    )
    assert reply.status == 200 and _alice(service) == 1


def test_foreign_host_is_refused(service: RunningServer) -> None:
    """DNS rebinding: a request whose Host is not the service's gets 400, token or not."""
    service.guard.set_budget(10, user="alice")
    for path, method, body in [
        ("/v1/budgets", "GET", None),
        ("/v1/spend", "POST", {"user": "alice", "cost": "1"}),
    ]:
        reply = call(service.url + path, method, body, headers={"Host": "evil.example:8000"})
        assert reply.status == 400 and "host" in reply.json()["error"]
    assert _alice(service) == 0


def test_allowed_host_is_served(tmp_path: Path) -> None:
    """A name given in allowed_hosts passes the Host check."""
    config = ServerConfig(
        ledger="memory://",
        port=0,
        tokens=Tokens({ADMIN: "admin"}),
        allowed_hosts=("budgets.internal",),
    )
    with start(config) as running:
        reply = call(running.url + "/v1/budgets", headers={"Host": "budgets.internal"})
        assert reply.status == 200


# -- bad bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (b"[" * 30_000 + b"]" * 30_000, 400, "nests deeper"),
        (b'{"a":' * 40 + b"1" + b"}" * 40, 400, "nests deeper"),
        (b'{"user": "alice", "cost": 1e999999999}', 400, "too large"),
        (b'{"user": "alice", "cost": NaN}', 400, "NaN"),
        (b'{"user": "alice", "cost": Infinity}', 400, "Infinity"),
        (b'{"user": "alice", "cost": -Infinity}', 400, "Infinity"),
        (b'{"user": "alice", "cost": "-1"}', 400, "negative"),
        (b'{"user": "alice", "cost": "1e999999999"}', 400, "too large"),
        (b'{"user": "alice", "cost": 1' + b"0" * 5000 + b"}", 400, "too large"),
        (b'{"user": "alice", "cost": true}', 400, "cost"),
        (b'{"user": "alice", "limit": "9e99"}', 400, "too large"),
        (b'{"user": "alice", "cost": "' + b"x" * 70_000 + b'"}', 413, "at most"),
    ],
)
def test_bad_bodies_answer_400_or_413_and_change_nothing(
    service: RunningServer, body: bytes, status: int, message: str
) -> None:
    """Malformed, nested, non-finite, huge and oversized bodies are refused before any charge."""
    service.guard.set_budget(10, user="alice")
    reply = call(service.url + "/v1/spend", "POST", body)
    assert reply.status == status, reply.body[:200]
    assert message in reply.json()["error"]
    assert _alice(service) == 0


def test_oversized_chunked_body_is_refused(service: RunningServer) -> None:
    """A body without Content-Length is counted as it arrives and refused past the limit."""
    with socket.create_connection((service.host, service.port), timeout=10) as sock:
        head = (
            "POST /v1/spend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n"
        )
        sock.sendall(head.encode())
        chunk = b"x" * 16384
        try:
            for _ in range(8):
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:
            pass  # the server may close as soon as it has answered
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")


# -- connections and timeouts ---------------------------------------------------------------


def test_slow_headers_are_cut_off(service: RunningServer) -> None:
    """A client that never finishes its headers is disconnected after the read timeout."""
    with socket.create_connection((service.host, service.port), timeout=10) as sock:
        sock.sendall(b"GET /v1/budgets HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert 0.7 < time.monotonic() - started < 5


def test_idle_connection_is_cut_off(service: RunningServer) -> None:
    """A connection that sends nothing is closed after the read timeout."""
    with socket.create_connection((service.host, service.port), timeout=10) as sock:
        started = time.monotonic()
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 5


_IDLE_SERVER = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from budgetguard.server import ServerConfig, Tokens, serve
serve(ServerConfig(ledger="memory://", port=int(sys.argv[1]), read_timeout=1.0,
                   tokens=Tokens({sys.argv[2]: "admin"})))
"""


@pytest.mark.slow
def test_1100_idle_connections_do_not_lock_out_a_client(tmp_path: Path) -> None:
    """With 1,024 file descriptors, 1,100 idle connections still let a real client in."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-c", _IDLE_SERVER, str(port), ADMIN],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        stderr=subprocess.DEVNULL,
    )
    idle: list[socket.socket] = []
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if call(url + "/v1/health").status == 200:
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        for _ in range(1100):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            idle.append(sock)
        time.sleep(0.5)
        started = time.monotonic()
        reply = call(url + "/v1/health")
        assert reply.status == 200
        assert time.monotonic() - started < 8
    finally:
        for sock in idle:
            sock.close()
        server.terminate()
        server.wait(timeout=20)


# -- the APIs -------------------------------------------------------------------------------


def test_v1_budgets_spend_and_report(service: RunningServer) -> None:
    """PUT a budget, POST spend, and read both back, exactly."""
    reply = call(service.url + "/v1/budgets", "PUT", {"user": "bob", "limit": "2.50"})
    assert reply.status == 200
    for _ in range(3):
        assert call(service.url + "/v1/spend", "POST", {"user": "bob", "cost": "0.1"}).status == 200
    report = call(service.url + "/v1/report?by=user").json()["data"]
    [row] = report["budgets"]
    assert Decimal(str(row["spent"])) == Decimal("0.3")
    assert Decimal(str(row["remaining"])) == Decimal("2.2")
    assert report["spend"] == [{"user": "bob", "model": None, "spent": 0.3}]
    assert call(service.url + "/v1/report?period=never").status == 400


def test_hosted_budget_manager_works_with_a_token(service: RunningServer) -> None:
    """LiteLLM's hosted BudgetManager protocol is served, /update_cost included."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    client = BudgetManager("proj", client_type="hosted", api_base=service.url, headers=headers)
    client.create_budget(total_budget=1, user="u", duration="monthly")
    client.update_cost(user="u", model="gpt-4o", input_text="hello", output_text="hi")
    assert client.get_current_cost("u") > 0
    assert client.get_users() == ["u"]
    assert client._backend._atomic  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="401"):
        BudgetManager("proj", client_type="hosted", api_base=service.url)


def test_two_hosted_clients_lose_no_update(service: RunningServer) -> None:
    """Two clients with 50 concurrent $0.01 charges each keep exactly $1.00."""
    headers = {"Authorization": f"Bearer {ADMIN}"}
    clients = [
        BudgetManager("race", client_type="hosted", api_base=service.url, headers=headers)
        for _ in range(2)
    ]
    clients[0].create_budget(total_budget=100, user="u")

    def charge(client: BudgetManager) -> None:
        client._backend.add_cost("u", Decimal("0.01"), "m")  # type: ignore[attr-defined]

    threads = [threading.Thread(target=charge, args=(c,)) for c in clients for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert clients[1].get_current_cost("u") == Decimal("1.00")


# -- starting -------------------------------------------------------------------------------


def test_start_refuses_without_token() -> None:
    """No token and no --insecure-no-auth: the service does not start."""
    with pytest.raises(ConfigurationError, match="no token"):
        start(ServerConfig(port=0))


def test_no_auth_only_on_loopback() -> None:
    """Serving without authentication is refused off loopback, allowed on it."""
    with pytest.raises(ConfigurationError, match="loopback"):
        start(ServerConfig(host="0.0.0.0", port=0, no_auth=True, allowed_hosts=("*",)))
    with start(ServerConfig(port=0, no_auth=True)) as running:
        assert call(running.url + "/v1/budgets", token=None).status == 200


def test_start_refuses_an_unreachable_ledger() -> None:
    """A ledger that does not answer stops the start with StorageError."""
    pytest.importorskip("redis")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(StorageError):
        start(ServerConfig(ledger=f"redis://127.0.0.1:{port}/0", port=0, no_auth=True))


def _serve(*args: str, token: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("BUDGETGUARD_TOKEN", None)
    if token:
        env["BUDGETGUARD_TOKEN"] = ADMIN
    return subprocess.run(
        [sys.executable, "-m", "budgetguard", "serve", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        (["--port", "99999"], True, "between 0 and 65535"),
        (["--port", "http"], True, "not a port"),
        ([], False, "no token"),
        (["--insecure-no-auth", "--host", "0.0.0.0"], True, "loopback"),
        (["--host", "0.0.0.0"], True, "--allowed-host"),
        (["--read-timeout", "0"], True, "positive"),
        (["--ledger", "bogus://x"], True, "unknown ledger scheme"),
    ],
)
def test_serve_exits_2_on_bad_arguments(
    args: list[str],
    token: bool,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bad arguments and unsafe setups exit 2 with a usage message, before listening."""
    from budgetguard.cli import main

    monkeypatch.delenv("BUDGETGUARD_TOKEN", raising=False)
    monkeypatch.delenv("BUDGETGUARD_READ_TOKEN", raising=False)
    if token:
        monkeypatch.setenv("BUDGETGUARD_TOKEN", ADMIN)
    with pytest.raises(SystemExit) as stopped:
        main(["serve", "--ledger", "memory://", *args])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


def test_serve_exits_1_when_the_ledger_is_unreachable() -> None:
    """An unreachable ledger exits 1 with one line naming it."""
    pytest.importorskip("redis")
    done = _serve("--ledger", "redis://127.0.0.1:1/0")
    assert done.returncode == 1
    assert "redis://127.0.0.1:1/0" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_stops_gracefully() -> None:
    """SIGTERM finishes serving, closes the ledger and exits 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "BUDGETGUARD_TOKEN": ADMIN}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "budgetguard",
            "serve",
            "--ledger",
            "memory://",
            "--port",
            str(port),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert call(f"http://127.0.0.1:{port}/v1/health").status == 200
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, err
    assert "ledger closed" in err


def test_missing_extra_names_it() -> None:
    """Without uvicorn, serve says which extra to install."""
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from budgetguard.cli import main\n"
        "sys.exit(main(['serve', '--ledger', 'memory://', '--insecure-no-auth']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": os.getcwd()},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "[server]" in done.stderr and "pip install budgetguard" not in done.stderr
