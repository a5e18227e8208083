"""A budget server for LiteLLM's hosted ``BudgetManager``, on any budgetguard ledger.

Speaks LiteLLM's protocol, every request a ``POST`` of a JSON object:

- ``/get_budget`` ``{"project_name": ...}`` answers
  ``{"status": "success", "data": {user: record}}`` (an extra ``"user"``
  narrows ``data`` to that user);
- ``/set_budget`` ``{"project_name": ..., "user_dict": {user: record}}`` sets
  the budgets of the users it names (others are left alone); costs in it are
  absolute, as LiteLLM's client sends them: a higher ``current_cost`` raises
  the stored one, ``0`` resets it, a lower one (a client that missed other
  processes' spend) is ignored;

and adds ``/update_cost`` ``{"project_name": ..., "user": ..., "cost": "0.0012",
"model": ...}``, which adds a cost in one atomic ledger step. budgetguard's
client uses it, so processes sharing a budget never lose each other's spend.

Errors answer ``{"status": "error", "error": message}`` with a 4xx or 5xx code.

It has no authentication and no protection against cross-site requests: it
is kept for tests and for loopback use with ``python -m
budgetguard.compat.server --ledger URL``. ``budgetguard serve`` runs the
authenticated service of ``budgetguard.server`` instead.
"""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote

from ..errors import BudgetGuardError, StorageError
from ..guard import BudgetGuard
from ..money import to_decimal
from . import _json
from ._store import ProjectStore, UnknownUserError

__all__ = ["BudgetServer", "make_server", "serve"]

logger = logging.getLogger("budgetguard")

#: Requests larger than this are refused (a user dict of many thousand users fits).
MAX_BODY = 16 * 1024 * 1024


class _BadRequest(Exception):
    """A request the client must fix (400 unless another status is given)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        self.status = status
        super().__init__(message)


class BudgetServer(ThreadingHTTPServer):
    """Serve LiteLLM's budget protocol from a ``BudgetGuard``; one thread per connection."""

    daemon_threads = True
    # The standard library's default backlog (5) drops connections from busy clients.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], guard: BudgetGuard) -> None:
        self.guard = guard
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        """Return the base URL clients use (``api_base``)."""
        host, port = self.server_address[:2]
        shown = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{shown}:{port}"

    def store(self, project: str) -> ProjectStore:
        """Return the store of one project; its users live under the project's namespace."""
        return ProjectStore(self.guard, project, quote(project, safe="") + "/")

    def server_close(self) -> None:
        """Stop listening and close the ledger."""
        super().server_close()
        self.guard.close()


class _Handler(BaseHTTPRequestHandler):
    server: BudgetServer
    server_version = "budgetguard"

    def do_POST(self) -> None:
        """Answer one protocol request."""
        routes = {
            "/get_budget": self._get_budget,
            "/set_budget": self._set_budget,
            "/update_cost": self._update_cost,
        }
        path = self.path.split("?", 1)[0].rstrip("/")
        route = routes.get(path)
        try:
            if route is None:
                raise _BadRequest(
                    f"no endpoint {path!r}; use {', '.join(routes)}", HTTPStatus.NOT_FOUND
                )
            request = self._read()
            project = request.get("project_name")
            if not isinstance(project, str) or not project:
                raise _BadRequest("project_name must be a non-empty string")
            reply = route(self.server.store(project), request)
        except _BadRequest as error:
            self._answer(error.status, {"status": "error", "error": str(error)})
        except UnknownUserError as error:
            self._answer(HTTPStatus.NOT_FOUND, {"status": "error", "error": str(error)})
        except StorageError as error:
            logger.error("budget server: ledger unavailable: %s", error)
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "error": str(error)})
        except (ValueError, BudgetGuardError) as error:
            self._answer(HTTPStatus.BAD_REQUEST, {"status": "error", "error": str(error)})
        except Exception:
            logger.exception("budget server: request to %s failed", path)
            self._answer(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"status": "error", "error": "internal error; see the server's log"},
            )
        else:
            self._answer(HTTPStatus.OK, reply)

    def do_GET(self) -> None:
        """Refuse: every endpoint takes a POST."""
        self._answer(
            HTTPStatus.METHOD_NOT_ALLOWED, {"status": "error", "error": "use POST with a JSON body"}
        )

    # -- endpoints -----------------------------------------------------------------

    def _get_budget(self, store: ProjectStore, request: Mapping[str, Any]) -> dict[str, Any]:
        user = request.get("user")
        if user is None:
            return {"status": "success", "data": store.entries()}
        if not isinstance(user, str):
            raise _BadRequest("user must be a string")
        return {"status": "success", "data": {user: store.entry(user)} if store.has(user) else {}}

    def _set_budget(self, store: ProjectStore, request: Mapping[str, Any]) -> dict[str, Any]:
        user_dict = request.get("user_dict")
        if not isinstance(user_dict, Mapping):
            raise _BadRequest("user_dict must be an object of users")
        with _project_lock(store.project):
            touched = store.apply(user_dict)
        return {"status": "success", "data": {user: store.entry(user) for user in touched}}

    def _update_cost(self, store: ProjectStore, request: Mapping[str, Any]) -> dict[str, Any]:
        user = request.get("user")
        model = request.get("model")
        if not isinstance(user, str) or not user:
            raise _BadRequest("user must be a non-empty string")
        if model is not None and not isinstance(model, str):
            raise _BadRequest("model must be a string or null")
        cost = request.get("cost")
        if isinstance(cost, (str, int, Decimal)) and not isinstance(cost, bool):
            amount = to_decimal(cost, "cost")
        else:
            raise _BadRequest("cost must be a decimal string or a number")
        store.add_cost(user, amount, model)
        return {"status": "success", "data": {user: store.entry(user)}}

    # -- plumbing ------------------------------------------------------------------

    def _read(self) -> dict[str, Any]:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            raise _BadRequest("a Content-Length header is required", HTTPStatus.LENGTH_REQUIRED)
        try:
            length = int(length_header)
        except ValueError:
            raise _BadRequest("Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY:
            raise _BadRequest(
                f"the body must be at most {MAX_BODY} bytes", HTTPStatus.REQUEST_ENTITY_TOO_LARGE
            )
        body = self.rfile.read(length)
        try:
            request = _json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise _BadRequest(f"the body is not valid JSON: {error}") from None
        if not isinstance(request, dict):
            raise _BadRequest("the body must be a JSON object")
        return request

    def _answer(self, status: HTTPStatus, reply: Mapping[str, Any]) -> None:
        body = _json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        # Tells budgetguard's client that a 404 from /update_cost is not "no such route".
        self.send_header("BudgetGuard-Features", "update_cost")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Log each request at debug level instead of writing to stderr."""
        logger.debug("budget server %s: " + format, self.address_string(), *args)


# /set_budget reads a user's cost and raises it: two of those at once for one
# project would both see the old cost and add twice. /update_cost needs no
# lock, it is one atomic ledger step.
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _project_lock(project: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(project, threading.Lock())


def make_server(ledger_url: str, host: str = "127.0.0.1", port: int = 8000) -> BudgetServer:
    """Build a server for ``ledger_url`` bound to ``host:port`` (``port=0``: any free port)."""
    guard = BudgetGuard(ledger_url, metrics=False)
    try:
        return BudgetServer((host, port), guard)
    except BaseException:
        guard.close()
        raise


def serve(ledger_url: str, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve LiteLLM's budget protocol on ``ledger_url`` until interrupted."""
    server = make_server(ledger_url, host, port)
    logger.info("budget server for %s listening on %s", server.guard.ledger.url, server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the server from the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m budgetguard.compat.server",
        description="Serve LiteLLM's hosted BudgetManager protocol on a budgetguard ledger.",
    )
    parser.add_argument(
        "--ledger",
        default="memory://",
        help="ledger URL: memory://, sqlite:///path.db, redis://host:port/db",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logger.warning(
        "this server has no authentication: anyone who reaches %s:%s can change every "
        "budget; use `budgetguard serve` (the authenticated service) instead",
        arguments.host,
        arguments.port,
    )
    serve(arguments.ledger, arguments.host, arguments.port)


if __name__ == "__main__":
    main()
