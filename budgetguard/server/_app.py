"""The budget service as an ASGI application (Starlette): its gate, its routes, its replies."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Awaitable, Callable, Mapping
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import anyio
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from ..budgets import BOOST, MODES, UNITS, Budget
from ..compat import _json
from ..compat._store import ProjectStore, UnknownUserError
from ..errors import BudgetExceededError, BudgetGuardError, StorageError
from ..guard import BudgetGuard
from ..money import to_decimal
from ..periods import CALENDAR_PERIODS
from ..report import BREAKDOWNS, PERIODS, Report, build_report
from . import _dashboard
from ._body import BadRequest, parse_json
from ._config import AccessScope, ServerConfig, digest, normalise_origins, shown_url
from ._openapi import openapi_document
from ._reservations import Reservations, check_id

__all__ = ["FEATURES", "FEATURES_HEADER", "create_app"]

logger = logging.getLogger("budgetguard")

#: Every reply names the protocol extensions the server has, so that a client
#: downgrades only on what the server says, never on a stray 404 from a proxy.
FEATURES_HEADER = "BudgetGuard-Features"
FEATURES = "update_cost"
SESSION_COOKIE = "budgetguard_session"

#: Every POST and PUT changes budgets or spend (admin token only), except these reads.
_READ_POSTS = frozenset({"/get_budget"})
#: Routes a browser may open with the dashboard's session cookie (read-only).
_COOKIE_PATHS = frozenset({"/", "/v1/report", "/v1/budgets"})
#: Routes anyone may reach (after the Host and Origin checks): the login form.
_PUBLIC = frozenset({"/login"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Methods that carry a body: those are checked for Origin, Content-Type and size.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _error(
    status: int,
    message: str,
    headers: Mapping[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> Response:
    body = _json.dumps({"status": "error", "error": message, **(details or {})}).encode()
    reply = Response(body, status_code=status, media_type="application/json", headers=headers)
    reply.headers[FEATURES_HEADER] = FEATURES
    return reply


def _reply(data: Any) -> Response:
    body = _json.dumps({"status": "success", "data": data}).encode()
    return Response(body, media_type="application/json", headers={FEATURES_HEADER: FEATURES})


class _Gate:
    """Refuse what must not reach a route: foreign hosts and origins, wrong bodies, no token."""

    def __init__(self, app: ASGIApp, service: _Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self.service.check(scope, self._routed(scope))
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _routed(self, scope: Scope) -> bool:
        """Tell whether a route takes this path and method (else Starlette answers 404/405)."""
        routes = getattr(getattr(self.app, "router", None), "routes", ())
        return any(route.matches(scope)[0] == Match.FULL for route in routes)


def _headers(scope: Scope) -> dict[str, str]:
    # Header names are lower case in ASGI; a repeated header keeps its first value.
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class _Service:
    """The state behind the routes: the guard, the tokens, per-project locks."""

    def __init__(self, guard: BudgetGuard, config: ServerConfig) -> None:
        self.guard = guard
        self.config = config
        self.hosts = config.host_names()
        self.any_host = "*" in config.allowed_hosts
        self.origins = normalise_origins(config.allowed_origins)
        # A session cookie is an HMAC of a token under a key that lives as long as
        # the process: it never carries the token, and a restart logs everyone out.
        self._cookie_key = secrets.token_bytes(32)
        # Read sessions only: the cookie opens the dashboard, never an admin route.
        self._sessions = [self._session_of(token) for token in config.tokens.digests()]
        self.reservations = Reservations(guard)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- the gate ---------------------------------------------------------------------------

    def check(self, scope: Scope, routed: bool = True) -> ASGIApp | None:
        """Return the refusal for a request that must not go on, or ``None``.

        ``routed`` is false for a path or method no route takes: after the
        Host check and the token, Starlette answers it 404 or 405.
        """
        headers = _headers(scope)
        method: str = scope["method"]
        path: str = scope["path"].rstrip("/") or "/"
        host = _host_name(headers.get("host", ""))
        if not self.any_host and host not in self.hosts:
            # DNS rebinding: a page of evil.example that resolves to 127.0.0.1
            # still sends Host: evil.example.
            return _error(400, f"host {host!r} is not served here; see --allowed-host")
        if method in _BODY_METHODS and routed:
            refusal = self._check_origin(headers)
            if refusal is not None:
                return refusal
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            wanted = "application/x-www-form-urlencoded" if path in _PUBLIC else "application/json"
            if kind != wanted:
                # A cross-site HTML form can only send form or text bodies, so an
                # admin route that takes JSON alone cannot be reached by one.
                return _error(415, f"the body must be {wanted}, not {kind or 'missing'}")
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.config.max_body):
                return _error(413, f"the body must be at most {self.config.max_body} bytes")
        if path in _PUBLIC or self.config.no_auth:
            return None
        granted = self._scope_of(headers, path, method)
        if granted is None:
            if method == "GET" and path == "/" and "authorization" not in headers:
                return RedirectResponse("/login", status_code=303)
            return _error(
                401,
                "a bearer token is required: send Authorization: Bearer TOKEN",
                {"WWW-Authenticate": 'Bearer realm="budgetguard"'},
            )
        if method in _BODY_METHODS and path not in _READ_POSTS and granted != "admin":
            return _error(403, "this route changes budgets or spend: it needs an admin token")
        return None

    def _check_origin(self, headers: Mapping[str, str]) -> Response | None:
        if headers.get("sec-fetch-site", "") == "cross-site":
            return _error(403, "cross-site requests are refused")
        origin = headers.get("origin")
        if origin is None:
            return None  # not a browser, or a same-origin request of an old one
        origin = origin.rstrip("/").lower()
        parts = urlsplit(origin)
        if origin in self.origins or (
            parts.scheme in ("http", "https")
            and (self.any_host or _host_name(parts.netloc) in self.hosts)
            and parts.netloc == headers.get("host", "").lower()
        ):
            return None
        return _error(403, f"requests from origin {origin!r} are refused; see --allowed-origin")

    def _scope_of(self, headers: Mapping[str, str], path: str, method: str) -> AccessScope | None:
        authorization = headers.get("authorization", "")
        kind, _, token = authorization.partition(" ")
        if kind.lower() == "bearer" and token.strip():
            return self.config.tokens.scope_of(token.strip())
        if method in ("GET", "HEAD") and path in _COOKIE_PATHS:
            cookie = _cookie(headers.get("cookie", ""), SESSION_COOKIE)
            if cookie and self.session_is_valid(cookie):
                return "read"
        return None

    # -- sessions for the dashboard ---------------------------------------------------------

    def session_for(self, token: str) -> str | None:
        """Return the session cookie value for a valid ``token``, else ``None``."""
        if self.config.tokens.scope_of(token) is None:
            return None
        return self._session_of(digest(token))

    def session_is_valid(self, cookie: str) -> bool:
        """Tell whether ``cookie`` was issued by this process for a configured token."""
        valid = False
        for expected in self._sessions:
            valid |= hmac.compare_digest(expected, cookie)
        return valid

    def _session_of(self, token_digest: bytes) -> str:
        return hmac.new(self._cookie_key, token_digest, hashlib.sha256).hexdigest()

    # -- ledger work (runs in the thread pool) ----------------------------------------------

    def store(self, project: str) -> ProjectStore:
        """Return one project's store; its users live under the project's namespace."""
        return ProjectStore(self.guard, project, quote(project, safe="") + "/")

    def project_lock(self, project: str) -> threading.Lock:
        """Return the lock that serialises ``/set_budget`` of one project."""
        with self._locks_guard:
            return self._locks.setdefault(project, threading.Lock())


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _read_json(request: Request, config: ServerConfig) -> dict[str, Any]:
    """Read the whole body within the read timeout and the size limit, and parse it."""
    chunks: list[bytes] = []
    size = 0
    with anyio.move_on_after(config.read_timeout) as deadline:
        async for chunk in request.stream():
            size += len(chunk)
            if size > config.max_body:
                raise BadRequest(f"the body must be at most {config.max_body} bytes", 413)
            chunks.append(chunk)
    if deadline.cancelled_caught:
        raise BadRequest(f"the body did not arrive within {config.read_timeout} seconds", 408)
    return parse_json(b"".join(chunks))


Handler = Callable[["_Service", dict[str, Any]], Any]


def _json_route(
    service: _Service, works: Mapping[str, Handler]
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``works`` (blocking ledger calls, by method) as an endpoint that reads JSON."""

    async def endpoint(request: Request) -> Response:
        work = works["GET" if request.method == "HEAD" else request.method]
        try:
            if request.method in _SAFE_METHODS:
                payload: dict[str, Any] = {
                    key: values[-1]
                    for key, values in parse_qs(request.url.query, keep_blank_values=True).items()
                }
            else:
                payload = await _read_json(request, service.config)
            payload.update(request.path_params)  # the path names what the body acts on
            reply = await run_in_threadpool(work, service, payload)
        except BadRequest as error:
            return _error(error.status, str(error))
        except BudgetExceededError as error:
            return _error(402, str(error), details={"refused": _refusal(error)})
        except UnknownUserError as error:
            return _error(404, str(error))
        except StorageError as error:
            logger.error("budget service: ledger unavailable: %s", error)
            return _error(503, f"the ledger is unavailable: {error}")
        except (ValueError, BudgetGuardError) as error:
            return _error(400, str(error))
        except Exception:
            logger.exception("budget service: %s %s failed", request.method, request.url.path)
            return _error(500, "internal error; see the server's log")
        if isinstance(reply, Response):
            return reply
        return _reply(reply)

    return endpoint


def _refusal(error: BudgetExceededError) -> dict[str, Any]:
    return {
        "budget": error.budget,
        "user": error.user,
        "limit": error.limit,
        "spent": error.spent,
        "reserved": error.reserved,
        "requested": error.requested,
        "resets_at": _when(error.resets_at),
    }


# -- LiteLLM's hosted protocol ----------------------------------------------------------------


def _project(request: Mapping[str, Any]) -> str:
    project = request.get("project_name")
    if not isinstance(project, str) or not project:
        raise BadRequest("project_name must be a non-empty string")
    return project


def _get_budget(service: _Service, request: dict[str, Any]) -> Any:
    store = service.store(_project(request))
    user = request.get("user")
    if user is None:
        return store.entries()
    if not isinstance(user, str) or not user:
        raise BadRequest("user must be a non-empty string")
    return {user: store.entry(user)} if store.has(user) else {}


def _set_budget(service: _Service, request: dict[str, Any]) -> Any:
    store = service.store(_project(request))
    user_dict = request.get("user_dict")
    if not isinstance(user_dict, Mapping):
        raise BadRequest("user_dict must be an object of users")
    # /set_budget reads a user's cost and raises it: two at once would both add.
    with service.project_lock(store.project):
        touched = store.apply(user_dict)
    return {user: store.entry(user) for user in touched}


def _cost(value: object) -> Decimal:
    if isinstance(value, (str, int, Decimal)) and not isinstance(value, bool):
        return to_decimal(value, "cost")
    raise BadRequest("cost must be a decimal string or a number")


def _update_cost(service: _Service, request: dict[str, Any]) -> Any:
    store = service.store(_project(request))
    user = request.get("user")
    if not isinstance(user, str) or not user:
        raise BadRequest("user must be a non-empty string")
    store.add_cost(user, _cost(request.get("cost")), _optional_model(request))
    return {user: store.entry(user)}


# -- budgetguard's own API, version 1 ---------------------------------------------------------


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _report_data(report: Report, guard: BudgetGuard | None = None) -> dict[str, Any]:
    """Return a report as the API's JSON; with ``guard``, each budget row's definition too."""
    definitions = {budget.name: budget for budget in guard.budgets()} if guard is not None else {}
    now = guard.clock() if guard is not None else 0.0
    return {
        "period": report.period,
        "by": list(report.by),
        "generated_at": _when(report.generated_at),
        "since": _when(report.since),
        "until": _when(report.until),
        "total": report.total,
        "budgets": [
            {
                "budget": row.budget,
                "user": row.user,
                "period": row.period,
                "window": row.window,
                "limit": row.limit,
                "spent": row.spent,
                "reserved": row.reserved,
                "remaining": row.remaining,
                "resets_at": _when(row.resets_at),
                "subject": row.subject,
                "unit": row.unit,
                "mode": row.mode,
                "over": row.over,
                **_definition(definitions, row.budget, now),
            }
            for row in report.budgets
        ],
        "spend": [
            {"tag": row.tag, "spent": row.spent}
            if report.by == ("tag",)
            else {"user": row.user, "model": row.model, "spent": row.spent}
            for row in report.spend
        ],
        "reservations": [
            {
                "id": row.id,
                "budgets": list(row.budgets),
                "held": row.held,
                "expires_at": _when(row.expires_at),
            }
            for row in report.reservations
        ],
    }


def _definition(definitions: Mapping[str, Budget], name: str, now: float) -> dict[str, Any]:
    """Return what a budget row adds from the budget's definition: label, parent, boost..."""
    budget = definitions.get(name)
    if budget is None:
        return {}
    boost = definitions.get(BOOST + name)
    in_force = boost is not None and boost.until is not None and boost.until.timestamp() > now
    return {
        "label": budget.label,
        "parent": budget.parent,
        "sliding": budget.sliding,
        "boost": (
            {"limit": boost.limit, "until": _when(boost.until)}
            if in_force and boost is not None
            else None
        ),
    }


def _report(service: _Service, request: dict[str, Any]) -> Any:
    unknown = sorted(set(request) - {"period", "by"})
    if unknown:
        raise BadRequest(f"unknown query parameters {unknown}; use period and by")
    period = request.get("period", "current")
    by = request.get("by", "user")
    if period not in PERIODS:
        raise BadRequest(f"period must be one of {', '.join(PERIODS)}")
    if by not in BREAKDOWNS:
        raise BadRequest(f"by must be one of {', '.join(BREAKDOWNS)}")
    report = build_report(service.guard, period=period, by=BREAKDOWNS[by])
    return _report_data(report, service.guard)


def _budgets(service: _Service, request: dict[str, Any]) -> Any:
    return _report_data(build_report(service.guard), service.guard)["budgets"]


def _optional_user(request: Mapping[str, Any]) -> str | None:
    user = request.get("user")
    if user is not None and (not isinstance(user, str) or not user):
        raise BadRequest("user must be a non-empty string, or null for the global budget")
    return user


#: What names a budget in a request body: at most one subject, and the budget's unit and label.
_SUBJECT_FIELDS = ("user", "tag", "model", "provider")


def _subject(request: Mapping[str, Any]) -> dict[str, Any]:
    """Return the keywords naming a budget (user=, tag=, ..., unit=, label=) from a body."""
    found: dict[str, Any] = {}
    for name in _SUBJECT_FIELDS:
        value = request.get(name)
        if value is not None:
            if not isinstance(value, str) or not value:
                raise BadRequest(f"{name} must be a non-empty string or null")
            found[name] = value
    default = request.get("default", False)
    if not isinstance(default, bool):
        raise BadRequest("default must be true or false")
    given = [*found, *(["default"] if default else [])]
    if len(given) > 1:
        raise BadRequest(f"a budget has one subject; got {' and '.join(given)}")
    if default:
        found["default"] = True
    unit = request.get("unit", "usd")
    if unit not in UNITS:
        raise BadRequest(f"unit must be one of {', '.join(UNITS)}")
    found["unit"] = unit
    label = request.get("label")
    if label is not None and not isinstance(label, str):
        raise BadRequest("label must be a string or null")
    found["label"] = label
    return found


def _period_of(request: Mapping[str, Any]) -> object:
    period = request.get("period")
    if period is None or period in (*CALENDAR_PERIODS, "lifetime"):
        return None if period == "lifetime" else period
    if isinstance(period, int) and not isinstance(period, bool) and period > 0:
        return period
    raise BadRequest(
        "period must be daily, weekly, monthly, yearly, lifetime, null (lifetime) "
        "or a whole number of seconds"
    )


def _limit(request: Mapping[str, Any]) -> Decimal:
    limit = request.get("limit")
    if limit is None:
        raise BadRequest("limit is required")
    if isinstance(limit, (str, int, Decimal)) and not isinstance(limit, bool):
        return to_decimal(limit, "limit")
    raise BadRequest("limit must be a decimal string or a number")


def _put_budget(service: _Service, request: dict[str, Any]) -> Any:
    subject = _subject(request)
    mode = request.get("mode", "hard")
    if mode not in MODES:
        raise BadRequest(f"mode must be one of {', '.join(MODES)}")
    parent = request.get("parent")
    if parent is not None and (not isinstance(parent, str) or not parent):
        raise BadRequest("parent must be a budget name (global, user:alice, ...) or null")
    sliding = request.get("sliding", False)
    if not isinstance(sliding, bool):
        raise BadRequest("sliding must be true or false")
    options = {"period": _period_of(request), "mode": mode, "parent": parent, "sliding": sliding}
    limit = _limit(request)
    if subject.pop("default", False):
        service.guard.set_default_budget(limit, **subject, **options)
    else:
        service.guard.set_budget(limit, **subject, **options)
    return _budgets(service, {})


def _boost_budget(service: _Service, request: dict[str, Any]) -> Any:
    subject = _subject(request)
    until, duration = request.get("until"), request.get("duration")
    if (until is None) == (duration is None):
        raise BadRequest("give a boost either until (a date-time) or duration (seconds)")
    ends: dict[str, Any] = {}
    if until is not None:
        if not isinstance(until, str):
            raise BadRequest("until must be an ISO 8601 date-time with an offset")
        try:
            moment = datetime.fromisoformat(until)
        except ValueError:
            raise BadRequest(f"until is not an ISO 8601 date-time: {until!r}") from None
        if moment.tzinfo is None:
            raise BadRequest("until needs an offset (Z or +01:00): a boost ends at one instant")
        if moment.timestamp() <= service.guard.clock():
            raise BadRequest(f"until {until} is already past")
        ends["until"] = moment
    else:
        if isinstance(duration, bool) or not isinstance(duration, (int, Decimal)):
            raise BadRequest("duration must be a number of seconds")
        ends["duration"] = float(duration)
    service.guard.boost_budget(_limit(request), **ends, **subject)
    return _budgets(service, {})


def _add_spend(service: _Service, request: dict[str, Any]) -> Any:
    user = _optional_user(request)
    model = _optional_model(request)
    spent = service.guard.record_spend(_cost(request.get("cost")), user=user, model=model)
    return {"user": user, "model": model, "spent": spent}


def _optional_model(request: Mapping[str, Any]) -> str | None:
    model = request.get("model")
    if model is not None and (not isinstance(model, str) or not model):
        raise BadRequest("model must be a non-empty string or null")
    return model


def _reserve(service: _Service, request: dict[str, Any]) -> Any:
    estimate = request.get("estimate", "0")
    return service.reservations.reserve(
        check_id(request.get("id")),
        _optional_user(request),
        _cost(estimate),
        _optional_model(request),
    )


def _settle(service: _Service, request: dict[str, Any]) -> Any:
    if "cost" not in request:
        raise BadRequest("cost is required (release the reservation if nothing was spent)")
    return service.reservations.settle(
        check_id(request.get("id")), _cost(request["cost"]), _optional_model(request)
    )


def _release(service: _Service, request: dict[str, Any]) -> Any:
    return service.reservations.settle(check_id(request.get("id")), None, None)


def _openapi(service: _Service, request: dict[str, Any]) -> Any:
    body = _json.dumps(openapi_document()).encode()
    return Response(body, media_type="application/json")


def _health(service: _Service, request: dict[str, Any]) -> Any:
    service.guard.ledger.ping()
    return {"ledger": shown_url(service.guard.ledger.url)}


#: Days in the dashboard's spend-over-time chart, ending today.
DAYS_SHOWN = 14


def _daily_spend(guard: BudgetGuard, count: int) -> list[tuple[date, Decimal]]:
    """Return the spend of each of the last ``count`` days (days of ``guard.tz``), oldest first."""
    today = datetime.fromtimestamp(guard.clock(), guard.tz).date()
    found = []
    for back in range(count - 1, -1, -1):
        day = today - timedelta(days=back)
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=guard.tz).timestamp()
        # The report's daily calendar reads that day's tallies, the one home of their format.
        report = build_report(guard, period="current", by=(), calendar="daily", now=noon)
        found.append((day, report.total))
    return found


def _dashboard_page(service: _Service, request: dict[str, Any]) -> Any:
    period = request.get("period", "current")
    if period not in PERIODS:
        period = "current"
    report = build_report(service.guard, period=period, by=("user", "model"))
    days = _daily_spend(service.guard, DAYS_SHOWN)
    page = _dashboard.render_dashboard(report, shown_url(service.guard.ledger.url), days)
    return HTMLResponse(page, headers=_dashboard.PAGE_HEADERS)


# -- the login form ---------------------------------------------------------------------------


async def _login_form(request: Request) -> Response:
    return HTMLResponse(_dashboard.render_login(None), headers=_dashboard.PAGE_HEADERS)


def _login_endpoint(service: _Service) -> Callable[[Request], Awaitable[Response]]:
    async def login(request: Request) -> Response:
        chunks: list[bytes] = []
        with anyio.move_on_after(service.config.read_timeout):
            async for chunk in request.stream():
                chunks.append(chunk)
                if sum(map(len, chunks)) > 4096:
                    return _error(413, "the login form is at most 4096 bytes")
        form = parse_qs(b"".join(chunks).decode("utf-8", "replace"))
        token = (form.get("token") or [""])[-1].strip()
        cookie = service.session_for(token) if token else None
        if cookie is None:
            page = _dashboard.render_login("That token is not valid.")
            return HTMLResponse(page, status_code=401, headers=_dashboard.PAGE_HEADERS)
        reply = RedirectResponse("/", status_code=303)
        reply.set_cookie(SESSION_COOKIE, cookie, httponly=True, samesite="strict", path="/")
        return reply

    return login


def create_app(guard: BudgetGuard, config: ServerConfig | None = None) -> ASGIApp:
    """Build the budget service for ``guard`` as an ASGI application.

    The application checks ``Host``, ``Origin``, ``Content-Type``, body size
    and the bearer token of every request before any route runs.
    """
    settings = config or ServerConfig()
    service = _Service(guard, settings)

    def route(path: str, work: Handler, methods: list[str], **more: Handler) -> Route:
        works = {method: work for method in methods}
        works.update(more)
        return Route(path, _json_route(service, works), methods=list(works))

    routes = [
        route("/", _dashboard_page, ["GET"]),
        Route("/login", _login_form, methods=["GET"]),
        Route("/login", _login_endpoint(service), methods=["POST"]),
        route("/get_budget", _get_budget, ["POST"]),
        route("/set_budget", _set_budget, ["POST"]),
        route("/update_cost", _update_cost, ["POST"]),
        route("/v1/health", _health, ["GET"]),
        route("/openapi.json", _openapi, ["GET"]),
        route("/v1/report", _report, ["GET"]),
        route("/v1/budgets", _budgets, ["GET"], PUT=_put_budget),
        route("/v1/budgets/boost", _boost_budget, ["POST"]),
        route("/v1/spend", _add_spend, ["POST"]),
        route("/v1/reservations", _reserve, ["POST"]),
        route("/v1/reservations/{id}/settle", _settle, ["POST"]),
        route("/v1/reservations/{id}/release", _release, ["POST"]),
    ]
    app = Starlette(routes=routes)
    return _Gate(app, service)
