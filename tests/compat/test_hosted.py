"""The hosted client and ``budgetguard serve``: LiteLLM's protocol, shared budgets, clear errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from budgetguard import BudgetManager
from budgetguard.compat import BudgetServerError, UnknownUserError
from budgetguard.compat.server import BudgetServer

WORKER = Path(__file__).with_name("_hosted_worker.py")
PER_CALL = Decimal("0.000002")


def _post(url: str, body: bytes, method: str = "POST") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url,
        data=body if method == "POST" else None,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.slow
def test_two_processes_share_one_budget(server: BudgetServer) -> None:
    """Two processes charging one user through the server lose no update."""
    BudgetManager("shared", client_type="hosted", api_base=server.url).create_budget(1, "u")
    count = 100
    workers = [
        subprocess.Popen([sys.executable, str(WORKER), server.url, "shared", "u", str(count)])
        for _ in range(2)
    ]
    for worker in workers:
        assert worker.wait(timeout=120) == 0
    watcher = BudgetManager("shared", client_type="hosted", api_base=server.url)
    assert watcher.get_current_cost("u") == PER_CALL * count * 2
    assert watcher.get_model_cost("u") == {"gpt-3.5-turbo": PER_CALL * count * 2}


def test_one_process_sees_anothers_spend(server: BudgetServer) -> None:
    """A client reads the server's numbers, so a budget spent elsewhere refuses here."""
    one = BudgetManager("shared", client_type="hosted", api_base=server.url)
    two = BudgetManager("shared", client_type="hosted", api_base=server.url)
    one.create_budget(total_budget="0.00001", user="u", duration="daily")
    assert two.is_valid_user("u")
    two.update_cost(user="u", model="gpt-4o", input_text="hello " * 10, output_text="hi")
    assert one.get_current_cost("u") == two.get_current_cost("u") > one.get_total_budget("u")
    assert one.reset_cost("u")["user"]["current_cost"] == 0
    assert two.get_current_cost("u") == 0


def test_projects_are_separate_on_one_server(server: BudgetServer) -> None:
    """Two projects with the same user id do not see each other."""
    first = BudgetManager("first", client_type="hosted", api_base=server.url)
    second = BudgetManager("second", client_type="hosted", api_base=server.url)
    first.create_budget(1, "u")
    assert second.get_users() == [] and not second.is_valid_user("u")
    with pytest.raises(UnknownUserError):
        second.update_cost(user="u", model="gpt-4o", input_text="a", output_text="b")
    second.create_budget(1, "u")
    second.update_cost(user="u", model="gpt-4o", input_text="a", output_text="b")
    assert second._backend._atomic  # type: ignore[attr-defined]  # still on /update_cost


def test_litellm_client_protocol(server: BudgetServer) -> None:
    """A LiteLLM client's whole-dict /set_budget works; stale lower costs are ignored, 0 resets."""
    body = {
        "project_name": "lite",
        "user_dict": {
            "u": {"total_budget": 10, "current_cost": 0.25, "model_cost": {"gpt-4o": 0.25}},
            "m": {
                "total_budget": 5,
                "duration": 28,
                "created_at": 1_700_000_000.0,
                "last_updated_at": 1_700_000_000.0,
            },
        },
    }
    status, reply = _post(server.url + "/set_budget", json.dumps(body).encode())
    assert status == 200 and reply["status"] == "success"
    status, reply = _post(server.url + "/get_budget", b'{"project_name": "lite"}')
    assert reply["data"]["u"]["current_cost"] == 0.25
    assert reply["data"]["u"]["model_cost"] == {"gpt-4o": 0.25}
    assert reply["data"]["m"]["duration"] in (28, 29, 30, 31)

    client = BudgetManager("lite", client_type="hosted", api_base=server.url)
    client.update_cost(user="u", model="gpt-4o", input_text="a", output_text="b")
    after = client.get_current_cost("u")
    stale = {"project_name": "lite", "user_dict": {"u": {"total_budget": 10, "current_cost": 0.3}}}
    _post(server.url + "/set_budget", json.dumps(stale).encode())
    assert client.get_current_cost("u") == Decimal("0.3")  # raised to the posted value
    lower = {"project_name": "lite", "user_dict": {"u": {"total_budget": 10, "current_cost": 0.1}}}
    _post(server.url + "/set_budget", json.dumps(lower).encode())
    assert client.get_current_cost("u") == Decimal("0.3") > after  # a stale writer is ignored
    zero = {"project_name": "lite", "user_dict": {"u": {"total_budget": 10, "current_cost": 0}}}
    _post(server.url + "/set_budget", json.dumps(zero).encode())
    assert client.get_current_cost("u") == 0 and client.get_model_cost("u") == {}


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/get_budget", b"{not json", 400, "not valid JSON"),
        ("/get_budget", b"[1, 2]", 400, "JSON object"),
        ("/get_budget", b"{}", 400, "project_name"),
        ("/set_budget", b'{"project_name": "p", "user_dict": 3}', 400, "user_dict"),
        (
            "/set_budget",
            b'{"project_name": "p", "user_dict": {"u": {"total_budget": -1}}}',
            400,
            "negative",
        ),
        ("/update_cost", b'{"project_name": "p", "user": "nobody", "cost": "1"}', 404, "nobody"),
        ("/update_cost", b'{"project_name": "p", "user": "u", "cost": true}', 400, "cost"),
        ("/elsewhere", b"{}", 404, "no endpoint"),
    ],
)
def test_bad_requests_get_json_errors(
    server: BudgetServer, path: str, body: bytes, status: int, message: str
) -> None:
    """Bad JSON and bad requests are answered with a 4xx code and a JSON error, changing nothing."""
    answered, reply = _post(server.url + path, body)
    assert answered == status
    assert reply["status"] == "error" and message in reply["error"]
    _, listing = _post(server.url + "/get_budget", b'{"project_name": "p"}')
    assert listing["data"] == {}


def test_get_is_refused(server: BudgetServer) -> None:
    """Every endpoint takes a POST; a GET gets 405 with a JSON error."""
    status, reply = _post(server.url + "/get_budget", b"", method="GET")
    assert status == 405 and reply["status"] == "error"


# -- the client against misbehaving servers ---------------------------------------------


class _Stub(BaseHTTPRequestHandler):
    answer: Callable[[_Stub], None]
    seen: list[dict[str, Any]]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append({"path": self.path, "headers": dict(self.headers), "body": body})
        type(self).answer(self)

    def reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the client gave up waiting (the timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet."""


@pytest.fixture
def stub() -> Iterator[Callable[[Callable[[_Stub], None]], tuple[str, list[dict[str, Any]]]]]:
    """Start stub servers that answer as the test says; return (url, requests seen)."""
    started: list[ThreadingHTTPServer] = []

    def start(answer: Callable[[_Stub], None]) -> tuple[str, list[dict[str, Any]]]:
        seen: list[dict[str, Any]] = []
        handler = type("Handler", (_Stub,), {"answer": answer, "seen": seen})
        running = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        running.daemon_threads = True
        threading.Thread(target=running.serve_forever, daemon=True).start()
        started.append(running)
        return f"http://127.0.0.1:{running.server_address[1]}", seen

    yield start
    for running in started:
        running.shutdown()
        running.server_close()


def test_custom_headers_are_sent(stub: Any) -> None:
    """Headers given to BudgetManager reach the server on every request."""
    url, seen = stub(lambda h: h.reply(200, b'{"status": "success", "data": {}}'))
    BudgetManager("p", client_type="hosted", api_base=url, headers={"Authorization": "Bearer k"})
    assert seen[0]["path"] == "/get_budget"
    assert seen[0]["headers"]["Authorization"] == "Bearer k"
    assert seen[0]["body"] == {"project_name": "p"}


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (500, b'{"status": "error", "error": "database on fire"}', "HTTP 500: database on fire"),
        (502, b"<html>bad gateway</html>", "HTTP 502"),
        (200, b"<html>not json</html>", "not JSON"),
        (200, b'{"data": {}}', "without a 'status'"),
        (200, b'{"status": "success", "data": []}', "'data' object"),
        (200, b'{"status": "success", "data": {"u": {"current_cost": 1}}}', "malformed record"),
    ],
)
def test_failures_and_malformed_replies_are_clear(
    stub: Any, status: int, body: bytes, message: str
) -> None:
    """HTTP failures and replies that break the protocol raise BudgetServerError saying why."""
    url, _ = stub(lambda h: h.reply(status, body))
    with pytest.raises(BudgetServerError, match=message) as error:
        BudgetManager("p", client_type="hosted", api_base=url)
    assert error.value.url.startswith(url)


def test_litellm_error_status_means_empty_project(stub: Any) -> None:
    """As in LiteLLM, /get_budget answering status "error" means the project is new."""
    url, _ = stub(lambda h: h.reply(200, b'{"status": "error"}'))
    assert BudgetManager("p", client_type="hosted", api_base=url).get_users() == []


def test_timeout_is_a_clear_error(stub: Any) -> None:
    """A server slower than ``timeout`` raises BudgetServerError instead of hanging."""
    url, _ = stub(lambda h: (time.sleep(2), h.reply(200, b'{"status": "success", "data": {}}')))
    started = time.monotonic()
    with pytest.raises(BudgetServerError, match="timed out"):
        BudgetManager("p", client_type="hosted", api_base=url, timeout=0.2)
    assert time.monotonic() - started < 1.5


def test_unreachable_server_is_a_clear_error() -> None:
    """Nothing listening at api_base raises BudgetServerError naming the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(BudgetServerError, match=f"cannot reach http://127.0.0.1:{port}"):
        BudgetManager("p", client_type="hosted", api_base=f"http://127.0.0.1:{port}")


def test_litellm_only_server_falls_back_to_set_budget(stub: Any) -> None:
    """Against a server without /update_cost, costs are written back with /set_budget."""
    users: dict[str, Any] = {}

    def litellm_server(handler: _Stub) -> None:
        body = handler.seen[-1]["body"]
        if handler.path == "/set_budget":
            for user, record in body["user_dict"].items():
                users.setdefault(user, {}).update(record)
            handler.reply(200, b'{"status": "success"}')
        elif handler.path == "/get_budget":
            handler.reply(200, json.dumps({"status": "success", "data": users}).encode())
        else:
            handler.reply(404, b"not found")

    url, seen = stub(litellm_server)
    client = BudgetManager("p", client_type="hosted", api_base=url)
    client.create_budget(10, "u")
    client.update_cost(user="u", model="gpt-4o", input_text="hi", output_text="yo")
    client.update_cost(user="u", model="gpt-4o", input_text="hi", output_text="yo")
    assert [s["path"] for s in seen].count("/update_cost") == 1  # asked once, then fell back
    assert client.get_current_cost("u") > 0
    assert users["u"]["model_cost"]["gpt-4o"] == float(client.get_current_cost("u"))


def test_a_stray_404_does_not_downgrade_a_budgetguard_server(stub: Any) -> None:
    """A 404 on /update_cost from a server that lists update_cost raises, and stays atomic."""
    features = {"BudgetGuard-Features": "update_cost"}
    record = {"total_budget": 10, "current_cost": 0, "model_cost": {}}
    refusals = [1]  # the first /update_cost meets a proxy answering 404 during a deploy

    def budgetguard_server(handler: _Stub) -> None:
        data = json.dumps({"status": "success", "data": {"u": record}}).encode()
        if handler.path == "/update_cost" and refusals:
            refusals.pop()
            handler.reply(404, b"<html>no upstream</html>")
        else:
            handler.reply(200, data, features)

    url, seen = stub(budgetguard_server)
    client = BudgetManager("p", client_type="hosted", api_base=url)
    with pytest.raises(BudgetServerError, match="HTTP 404"):
        client.update_cost(user="u", model="gpt-4o", input_text="hi", output_text="yo")
    client.update_cost(user="u", model="gpt-4o", input_text="hi", output_text="yo")
    paths = [s["path"] for s in seen]
    assert paths.count("/update_cost") == 2 and "/set_budget" not in paths


@pytest.mark.slow
def test_server_runs_as_a_module(tmp_path: Path) -> None:
    """``python -m budgetguard.compat.server --ledger URL --port N`` serves the protocol."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [
        sys.executable,
        "-m",
        "budgetguard.compat.server",
        "--ledger",
        f"sqlite:///{tmp_path / 'b.db'}",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                client = BudgetManager("p", client_type="hosted", api_base=url, timeout=1)
                break
            except BudgetServerError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.05)
        client.create_budget(2, "u", duration="weekly")
        assert client.user_dict["u"]["duration"] == 7
    finally:
        process.terminate()
        process.wait(timeout=10)
