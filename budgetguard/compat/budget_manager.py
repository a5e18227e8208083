"""``BudgetManager``: LiteLLM's per-user budget class, exact, atomic and thread-safe.

The public methods, arguments and return shapes are LiteLLM's, so code written
for ``litellm.BudgetManager`` runs unchanged. Underneath, every user is a
budgetguard budget: amounts are ``Decimal``, a charge is one atomic ledger
operation, durations are calendar periods, and the local file is replaced
atomically instead of being rewritten in place by a thread per write.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from ..errors import (
    BudgetGuardError,
    ConfigurationError,
    StorageError,
    UnknownModelError,
    UsageMissingError,
)
from ..guard import BudgetGuard
from ..money import MONEY, to_decimal
from . import _json
from ._process import exempt
from ._store import DURATIONS, ProjectStore, UnknownUserError, UserEntry, parse_created_at

__all__ = ["BudgetManager", "BudgetServerError", "UnknownUserError"]

logger = logging.getLogger("budgetguard")

LITELLM_FILE = "user_cost.json"
_CLIENT_TYPES = ("local", "hosted")


class BudgetServerError(BudgetGuardError):
    """Report a budget server that could not be reached, failed, or answered nonsense."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(message)


class _Backend(Protocol):
    """Where a BudgetManager keeps its users: a local ledger and file, or a server."""

    def load(self) -> None: ...
    def users(self) -> list[str]: ...
    def find(self, user: str) -> UserEntry | None: ...
    def entries(self) -> dict[str, UserEntry]: ...
    def create(
        self, user: str, total: Decimal, duration: str | None, created_at: datetime | None
    ) -> UserEntry: ...
    def add_cost(self, user: str, cost: Decimal, model: str | None) -> UserEntry: ...
    def reset(self, user: str) -> UserEntry: ...
    def save(self) -> dict[str, Any]: ...
    def refresh(self) -> None: ...


class BudgetManager:
    """Set budgets per user and track what each spent, as LiteLLM's ``BudgetManager`` does.

    ``client_type="local"`` keeps the project in a ledger (``guard``'s, else a
    private in-memory one) and saves it, atomically, to ``path`` (default
    ``<project_name>_user_cost.json`` in the working directory; on first use
    an existing LiteLLM ``user_cost.json`` there is imported).
    ``client_type="hosted"`` keeps it on a server that speaks LiteLLM's
    ``/get_budget`` and ``/set_budget`` protocol at ``api_base`` (such as
    ``budgetguard serve``), with ``headers`` and ``timeout`` seconds per request.

    Amounts come back as ``Decimal``. ``autosave=False`` leaves writing the
    local file to ``save_data()``.
    """

    def __init__(
        self,
        project_name: str,
        client_type: str = "local",
        api_base: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        guard: BudgetGuard | None = None,
        path: str | os.PathLike[str] | None = None,
        autosave: bool = True,
        timeout: float = 10.0,
    ) -> None:
        if not isinstance(project_name, str) or not project_name:
            raise ConfigurationError(
                f"project_name must be a non-empty string, got {project_name!r}"
            )
        if client_type not in _CLIENT_TYPES:
            raise ConfigurationError(
                f"client_type must be 'local' or 'hosted', got {client_type!r}"
            )
        self.project_name = project_name
        self.client_type = client_type
        self.api_base = api_base
        self.headers: dict[str, str] = {"Content-Type": "application/json", **(headers or {})}
        if guard is None:
            # Prices and estimates only, or the project's own ledger: its
            # spend is bookkeeping of calls that max_budget counted already.
            guard = BudgetGuard("memory://", metrics=False)
            exempt(guard)
        self.guard = guard
        self._backend: _Backend
        if client_type == "local":
            file = Path(path) if path is not None else Path.cwd() / _file_name(project_name)
            legacy = Path.cwd() / LITELLM_FILE if path is None else None
            store = ProjectStore(guard, project_name)
            self._backend = _LocalBackend(store, file, legacy, autosave=autosave)
        else:
            if not api_base:
                raise ConfigurationError(
                    "client_type='hosted' needs api_base, the URL of a budget server "
                    "such as `budgetguard serve` (LiteLLM's own hosted service is not assumed)"
                )
            self._backend = _HostedBackend(api_base, self.headers, project_name, timeout)
        self.load_data()

    def __repr__(self) -> str:
        return f"BudgetManager({self.project_name!r}, client_type={self.client_type!r})"

    # -- LiteLLM's API ---------------------------------------------------------------

    def print_verbose(self, print_statement: object) -> None:
        """Log a debug message (LiteLLM prints it when ``litellm.set_verbose``)."""
        logger.debug("%s", print_statement)

    def load_data(self) -> None:
        """Load the project: import the local file's new users, or reach the server."""
        self._backend.load()

    def create_budget(
        self,
        total_budget: float | int | str | Decimal,
        user: str,
        duration: str | None = None,
        created_at: float | datetime | None = None,
    ) -> UserEntry:
        """Give ``user`` a budget of ``total_budget`` dollars per ``duration``; return their record.

        ``duration`` is ``"daily"``, ``"weekly"``, ``"monthly"``, ``"yearly"``
        (calendar periods, in UTC unless the guard says otherwise) or ``None``
        (no reset). ``created_at`` defaults to now. A user who already has a
        budget keeps what they spent in the current period.
        """
        _check_user(user)
        if duration is not None and duration not in DURATIONS:
            raise ValueError(
                f'duration needs to be one of ["daily", "weekly", "monthly", "yearly"] or None, '
                f"got {duration!r}"
            )
        total = to_decimal(total_budget, "total_budget")
        return self._backend.create(user, total, duration, parse_created_at(created_at))

    def projected_cost(
        self, model: str, messages: list[Any], user: str, max_tokens: int | None = None
    ) -> Decimal:
        """Return ``user``'s spend plus what a call with ``messages`` would cost at most.

        The call's cost counts its input and its expected output: ``max_tokens``,
        else the guard's ``default_output_tokens``.
        """
        current = self.get_current_cost(user)
        found = self.guard.estimate_call(
            {"model": model, "messages": messages, "max_tokens": max_tokens}
        )
        return current + (found[0] if found is not None else Decimal(0))

    def get_total_budget(self, user: str) -> Decimal:
        """Return ``user``'s budget in dollars."""
        total: Decimal = self._entry(user)["total_budget"]
        return total

    def update_cost(
        self,
        user: str,
        completion_obj: Any = None,
        model: str | None = None,
        input_text: str | None = None,
        output_text: str | None = None,
    ) -> dict[str, UserEntry]:
        """Charge ``user`` for a response (from its usage) or for text in and out of ``model``.

        Returns ``{"user": record}`` as LiteLLM does. Text is priced from its
        token count, as the provider bills a call: ``input_text`` as one user
        message (chat framing included), ``output_text`` as plain text (a
        completion's tokens have no message framing; LiteLLM counts it as a
        message, 7 tokens more). A missing or empty text counts no tokens.
        """
        _check_user(user)
        from ..tokens import count_tokens
        from ..usage import Usage, extract_usage

        if completion_obj is not None:
            usage = extract_usage(completion_obj)
            if usage is None:
                raise UsageMissingError(
                    f"cannot update cost from a {type(completion_obj).__name__}: "
                    "it carries no usage budgetguard reads"
                )
            name = usage.model or model
            if usage.model is None and name is not None:
                usage = usage.with_model(name)
        elif model is not None and (input_text is not None or output_text is not None):
            name = model
            usage = Usage(
                input_tokens=count_tokens([{"role": "user", "content": input_text}], model)
                if input_text
                else 0,
                output_tokens=count_tokens(output_text, model) if output_text else 0,
                model=model,
                estimated=True,
            )
        else:
            raise ValueError(
                "Either a chat completion object or the text response needs to be passed in: "
                "update_cost(user, completion_obj=response) or "
                "update_cost(user, model=..., input_text=..., output_text=...)"
            )
        cost, priced = self.guard.price(usage, name)
        entry = self._backend.add_cost(user, cost, name)
        if not priced and self.guard.on_unknown_model == "raise":
            raise UnknownModelError(
                name or "",
                f"no price known for model {name!r}; the user was charged the fallback price",
            )
        return {"user": entry}

    def get_current_cost(self, user: str) -> Decimal:
        """Return what ``user`` spent in the current period."""
        current: Decimal = self._entry(user)["current_cost"]
        return current

    def get_model_cost(self, user: str) -> dict[str, Decimal]:
        """Return ``user``'s spend in the current period per model (``{}`` when none)."""
        models: dict[str, Decimal] = self._entry(user)["model_cost"]
        return models

    def is_valid_user(self, user: str) -> bool:
        """Tell whether ``user`` has a budget."""
        return isinstance(user, str) and self._backend.find(user) is not None

    def get_users(self) -> list[str]:
        """Return every user with a budget, in the order they were created (as LiteLLM)."""
        return self._backend.users()

    def reset_cost(self, user: str) -> dict[str, UserEntry]:
        """Start ``user``'s current period again at zero; return ``{"user": record}``."""
        _check_user(user)
        return {"user": self._backend.reset(user)}

    def reset_on_duration(self, user: str) -> None:
        """Check ``user`` and do nothing else: calendar periods start at zero by themselves."""
        self._entry(user)

    def update_budget_all_users(self) -> None:
        """Bring stored records up to date (no cron job is needed: periods reset by themselves)."""
        self._backend.refresh()

    def save_data(self) -> dict[str, Any]:
        """Write the local file now, atomically; hosted budgets are saved as they change."""
        return self._backend.save()

    @property
    def user_dict(self) -> dict[str, UserEntry]:
        """Return a snapshot of every user's record (changing it changes nothing)."""
        return self._backend.entries()

    def as_dict(self, *, json_safe: bool = False) -> dict[str, Any]:
        """Return every user's record, as ``user_dict``; ``json_safe=True``: amounts as strings.

        The strings are exact (``"0.000018"``; ``Decimal(text)`` reads them
        back), so ``json.dumps(budget_manager.as_dict(json_safe=True))`` works
        and loses nothing.
        """
        entries = self._backend.entries()
        return _json.json_safe(entries) if json_safe else entries

    def to_json(self, *, indent: int | None = None) -> str:
        """Return every user's record as JSON text, amounts as exact JSON numbers.

        This is the local file's format. ``json.loads(text, parse_float=Decimal)``
        reads it back exactly; a plain ``json.loads`` gives floats.
        """
        return _json.dumps(self._backend.entries(), indent=indent)

    def _entry(self, user: str) -> UserEntry:
        _check_user(user)
        entry = self._backend.find(user)
        if entry is None:
            raise UnknownUserError(user, self.project_name)
        return entry


def _check_user(user: object) -> None:
    if not isinstance(user, str) or not user:
        raise ValueError(f"user must be a non-empty string, got {user!r}")


def _file_name(project_name: str) -> str:
    # Percent-encoding keeps any project name a single, distinct file name.
    return f"{quote(project_name, safe='')}_{LITELLM_FILE}"


# -- local: a ledger, saved to a JSON file ----------------------------------------------


class _LocalBackend:
    """Keep the project in a ledger and mirror it to a JSON file, replaced atomically."""

    def __init__(
        self, store: ProjectStore, path: Path, legacy: Path | None, *, autosave: bool
    ) -> None:
        self.store = store
        self.path = path
        self.legacy = legacy
        self.autosave = autosave
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._version = 0
        self._saving = False

    def load(self) -> None:
        source = self.path
        if not source.exists() and self.legacy is not None and self.legacy.exists():
            source = self.legacy
        if not source.exists():
            return
        try:
            data = _json.loads(source.read_bytes())
        except (OSError, ValueError) as error:
            raise StorageError(f"cannot read budgets from {source}: {error}") from error
        try:
            imported = self.store.import_new(data)
        except ValueError as error:
            raise StorageError(f"cannot import budgets from {source}: {error}") from error
        if source != self.path:
            logger.info(
                "imported %d LiteLLM budgets from %s; project %r is saved to %s from now on",
                len(imported),
                source,
                self.store.project,
                self.path,
            )
            self.save()

    def users(self) -> list[str]:
        return self.store.users()

    def find(self, user: str) -> UserEntry | None:
        return self.store.entry(user) if self.store.has(user) else None

    def entries(self) -> dict[str, UserEntry]:
        return self.store.entries()

    def create(
        self, user: str, total: Decimal, duration: str | None, created_at: datetime | None
    ) -> UserEntry:
        entry = self.store.create(user, total, duration, created_at)
        self._changed()
        return entry

    def add_cost(self, user: str, cost: Decimal, model: str | None) -> UserEntry:
        self.store.add_cost(user, cost, model)
        self._changed()
        return self.store.entry(user)

    def reset(self, user: str) -> UserEntry:
        self.store.reset(user)
        self._changed()
        return self.store.entry(user)

    def refresh(self) -> None:
        self._changed()

    def save(self) -> dict[str, Any]:
        with self._write_lock:
            text = _json.dumps(self.store.entries(), indent=4)
            try:
                write_atomically(self.path, text)
            except OSError as error:
                raise StorageError(f"cannot save budgets to {self.path}: {error}") from error
        return {"status": "success"}

    def _changed(self) -> None:
        """Save after a change; concurrent changes share one write instead of queueing many."""
        if not self.autosave:
            return
        with self._state_lock:
            self._version += 1
            if self._saving:
                return  # the thread saving now writes again and includes this change
            self._saving = True
        try:
            while True:
                with self._state_lock:
                    version = self._version
                self.save()
                with self._state_lock:
                    if self._version == version:
                        self._saving = False
                        return
        except StorageError as error:
            with self._state_lock:
                self._saving = False
            # The ledger has the change; the next save writes it. Raising here
            # would make a recorded charge look like a failed one.
            logger.error("budgets not saved (kept in memory, saved on the next change): %s", error)


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``: a temporary file in the same directory, fsync, rename.

    A crash at any point leaves either the old file or the new one, never a
    truncated mix.
    """
    directory = path.parent if str(path.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(OSError):  # keep the old file's permissions
            os.chmod(temporary, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        try:
            directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(directory_fd)
        except OSError:
            pass
        finally:
            os.close(directory_fd)


# -- hosted: LiteLLM's HTTP protocol -------------------------------------------------------


class _HostedBackend:
    """Talk to a budget server: ``/get_budget``, ``/set_budget`` and ``/update_cost``.

    ``/update_cost`` adds a cost on the server in one atomic step, so that
    processes sharing a project never overwrite each other's spend; against
    a server that only knows LiteLLM's two endpoints the client falls back to
    LiteLLM's read-and-write-back (last writer wins), with a warning.
    """

    def __init__(
        self, api_base: str, headers: Mapping[str, str], project: str, timeout: float
    ) -> None:
        scheme = urlsplit(api_base).scheme.lower()
        if scheme not in ("http", "https"):
            raise ConfigurationError(f"api_base must be an http(s) URL, got {api_base!r}")
        if not timeout or timeout <= 0:
            raise ConfigurationError(
                f"timeout must be a positive number of seconds, got {timeout!r}"
            )
        self.api_base = api_base.rstrip("/")
        self.headers = dict(headers)
        self.project = project
        self.timeout = timeout
        self._atomic = True  # the server has /update_cost, until it says otherwise
        # What the last reply's BudgetGuard-Features header listed (budgetguard's servers).
        self._features: frozenset[str] = frozenset()

    def load(self) -> None:
        self.entries()

    def users(self) -> list[str]:
        return list(self.entries())  # in the server's order: creation order

    def find(self, user: str) -> UserEntry | None:
        return self._fetch(user).get(user)

    def entries(self) -> dict[str, UserEntry]:
        return self._fetch(None)

    def create(
        self, user: str, total: Decimal, duration: str | None, created_at: datetime | None
    ) -> UserEntry:
        record: dict[str, Any] = {"total_budget": total, "duration": duration}
        if created_at is not None:
            record["created_at"] = created_at.timestamp()
        return self._set(user, record)

    def add_cost(self, user: str, cost: Decimal, model: str | None) -> UserEntry:
        if self._atomic:
            try:
                reply = self._post(
                    "/update_cost",
                    {"project_name": self.project, "user": user, "cost": str(cost), "model": model},
                )
            except BudgetServerError as error:
                if error.status not in (404, 405, 501):
                    raise
                # 404 is also how budgetguard's server reports an unknown user.
                if self.find(user) is None:
                    raise UnknownUserError(user, self.project) from None
                if "update_cost" in self._features:
                    # The server just said it has /update_cost: the refusal came from
                    # something in between (a proxy during a deploy) and charged nothing.
                    raise
                self._atomic = False
                logger.warning(
                    "%s has no /update_cost; falling back to LiteLLM's /set_budget, where "
                    "concurrent writers can overwrite each other's spend",
                    self.api_base,
                )
            else:
                return self._user_of(reply, user)
        entry = self.find(user)
        if entry is None:
            raise UnknownUserError(user, self.project)
        models = dict(entry["model_cost"])
        key = model or ""
        models[key] = MONEY.add(models.get(key, Decimal(0)), cost)
        current = MONEY.add(entry["current_cost"], cost)
        return self._set(user, {"current_cost": current, "model_cost": models})

    def reset(self, user: str) -> UserEntry:
        if self.find(user) is None:
            raise UnknownUserError(user, self.project)
        return self._set(user, {"current_cost": 0, "model_cost": {}})

    def refresh(self) -> None:
        """Nothing to do: the server's windows reset by themselves."""

    def save(self) -> dict[str, Any]:
        # Every change was sent when it was made; posting this client's view
        # of all users would overwrite other clients' spend.
        return {"status": "success"}

    def _set(self, user: str, record: dict[str, Any]) -> UserEntry:
        reply = self._post(
            "/set_budget", {"project_name": self.project, "user_dict": {user: record}}
        )
        data = reply.get("data")
        if isinstance(data, Mapping) and user in data:
            return self._user_of(reply, user)
        found = self.find(user)
        if found is None:
            raise BudgetServerError(
                f"{self.api_base}/set_budget accepted user {user!r} but does not return it",
                url=self.api_base,
            )
        return found

    def _fetch(self, user: str | None) -> dict[str, UserEntry]:
        payload: dict[str, Any] = {"project_name": self.project}
        if user is not None:
            payload["user"] = user  # budgetguard's server answers with that user only
        reply = self._post("/get_budget", payload)
        if reply.get("status") == "error":
            return {}  # as LiteLLM: the project has not been stored yet
        data = reply.get("data")
        if not isinstance(data, Mapping):
            raise BudgetServerError(
                f"{self.api_base}/get_budget answered without a 'data' object", url=self.api_base
            )
        return {str(name): _entry(name, raw, self.api_base) for name, raw in data.items()}

    def _user_of(self, reply: Mapping[str, Any], user: str) -> UserEntry:
        data = reply.get("data")
        if not isinstance(data, Mapping) or user not in data:
            raise BudgetServerError(
                f"{self.api_base} answered without user {user!r} in 'data'", url=self.api_base
            )
        return _entry(user, data[user], self.api_base)

    def _post(self, path: str, payload: Mapping[str, Any]) -> dict[str, Any]:
        url = self.api_base + path
        request = urllib.request.Request(
            url, data=_json.dumps(payload).encode(), headers=self.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
                listed = response.headers.get("BudgetGuard-Features") or ""
                self._features = frozenset(name.strip() for name in listed.split(","))
        except urllib.error.HTTPError as error:
            detail = _error_detail(error)
            raise BudgetServerError(
                f"{url} answered HTTP {error.code}: {detail}", url=url, status=error.code
            ) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise BudgetServerError(f"cannot reach {url}: {reason}", url=url) from None
        try:
            reply = _json.loads(body)
        except ValueError:
            raise BudgetServerError(
                f"{url} answered with something that is not JSON: {body[:200]!r}", url=url
            ) from None
        if not isinstance(reply, dict) or "status" not in reply:
            raise BudgetServerError(
                f"{url} answered without a 'status': {str(reply)[:200]}", url=url
            )
        if reply["status"] == "error" and path != "/get_budget":
            raise BudgetServerError(
                f"{url} reported an error: {reply.get('error') or reply.get('message')}", url=url
            )
        return reply


def _error_detail(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read()[:500]
    except OSError:
        return str(error.reason)
    try:
        reply = _json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace") or str(error.reason)
    if isinstance(reply, Mapping) and reply.get("error"):
        return str(reply["error"])
    return body.decode("utf-8", "replace")


def _entry(user: object, raw: object, url: str) -> UserEntry:
    """Check one user's record from a server and make its amounts ``Decimal``."""
    try:
        if not isinstance(raw, Mapping):
            raise ValueError(f"expected an object, got {type(raw).__name__}")
        entry: UserEntry = dict(raw)
        entry["total_budget"] = to_decimal(raw["total_budget"], "total_budget")
        entry["current_cost"] = to_decimal(raw.get("current_cost") or 0, "current_cost")
        models = raw.get("model_cost") or {}
        if not isinstance(models, Mapping):
            raise ValueError("model_cost is not an object")
        entry["model_cost"] = {
            str(model): to_decimal(cost, "model_cost") for model, cost in models.items()
        }
        for name in ("created_at", "last_updated_at"):
            if entry.get(name) is not None:
                entry[name] = float(entry[name])
    except (KeyError, ValueError, TypeError) as error:
        raise BudgetServerError(
            f"{url} sent a malformed record for user {user!r}: {error}", url=url
        ) from None
    return entry
