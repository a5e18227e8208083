"""The engine as one object: configuration, budgets, direct charges, wiring.

``BudgetGuard`` is the whole engine; the module-level functions in
``budgetguard`` delegate to one default guard, as ``logging`` does with its
root logger. Tests and multi-tenant applications make their own guards.
The lifecycle every guarded call goes through lives in ``_lifecycle.py``,
the queries in ``_queries.py``; this module puts them together.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from ._alerts import Alerts
from ._call import Call, _current_call, current_call
from ._costing import FALLBACK_PRICE, Pricer
from ._estimate import MISSING_ESTIMATE_POLICIES, Learner, MissingEstimatePolicy
from ._lifecycle import CallLifecycle, OutcomeParts, _Ending
from ._outbox import DEFAULT_OUTBOX_SIZE, Outbox, Pending
from ._plan import Planner
from ._queries import BudgetQueries
from .budgets import (
    BOOST,
    DEFAULT,
    GLOBAL,
    UNITS,
    Budget,
    budget_name,
    labelled,
    subject_name,
)
from .errors import (
    ConfigurationError,
    StorageError,
    UsageMissingError,
)
from .events import Listener, ThresholdCrossing
from .ledger import BudgetChanges, Ledger, Reservation, ledger_from_url
from .money import from_units, to_decimal, to_units
from .periods import parse_tz
from .scope import _current as _scope_var
from .scope import current_scope
from .usage import extract_usage

if TYPE_CHECKING:
    from .scope import budget_scope as _budget_scope

__all__ = ["FALLBACK_PRICE", "BudgetGuard", "Call", "charge", "current_call"]

logger = logging.getLogger("budgetguard")

StoragePolicy = Literal["fail_closed", "fail_open"]
MissingCostPolicy = Literal["estimate", "raise", "ignore"]
UnknownModelPolicy = Literal["fallback", "raise", "ignore"]
OutsideScopePolicy = Literal["global", "refuse"]

_STORAGE_POLICIES = ("fail_closed", "fail_open")
_MISSING_COST_POLICIES = ("estimate", "raise", "ignore")
_UNKNOWN_MODEL_POLICIES = ("fallback", "raise", "ignore")
_OUTSIDE_SCOPE_POLICIES = ("global", "refuse")
_NO_TAGS: Mapping[str, str] = MappingProxyType({})


# -- process identity ------------------------------------------------------------------
# Reservation ids are unique across every process sharing a ledger: a random
# tag per process, renewed in a forked child (gunicorn --preload, multiprocessing).
_process_tag = os.urandom(6).hex()
_guards: weakref.WeakSet[BudgetGuard] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    global _process_tag
    _process_tag = os.urandom(6).hex()
    for guard in list(_guards):
        guard._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _flush_at_exit() -> None:
    # Charges still in an outbox get one last chance before the process ends.
    for guard in list(_guards):
        if guard._outbox.pending:
            guard._safely(guard._flush_outbox, final=True)


atexit.register(_flush_at_exit)


class BudgetGuard(CallLifecycle, BudgetQueries):
    """Check budgets before LLM calls and charge their cost after, atomically.

    ``ledger`` is a URL (``memory://``, ``sqlite:///spend.db``, ``redis://...``)
    or a ``Ledger``. ``tz`` is the default time zone of calendar periods.
    ``on_storage_error`` says what happens when the ledger cannot be reached:
    ``"fail_closed"`` (default: refuse the call with ``StorageError``) or
    ``"fail_open"`` (run it, log, count).
    ``on_missing_cost`` says what a call whose cost nothing reported is
    charged: its estimate (default), nothing, or an error.
    ``on_missing_estimate`` says what a call reserves when it gives no
    ``estimate=`` and none can be computed from its arguments: ``"learn"``
    (default: the high end of what recent calls of the same function and
    model cost; before the first one has settled, calls of that kind run one
    at a time), ``"raise"`` (``EstimateMissingError`` before the call) or
    ``"zero"`` (hold nothing: concurrent calls can overshoot, by your choice).
    ``on_unknown_model``: what a call to a model with no known price costs:
    ``"fallback"`` (default: ``fallback_price`` dollars per million input and
    output tokens, with a warning once per model), ``"raise"`` or ``"ignore"``.
    ``budget_cache_ttl``: how often, in seconds, budget definitions are
    re-read from a shared ledger (default 1; never for ``memory://``): only
    what changed, in a background thread, so a call never waits for it;
    ``0`` reads the changes on every call instead. A ledger found to have
    lost its data (its mark gone or changed) is a storage failure that
    ``on_storage_error`` handles, until this guard sets a budget again.
    ``clock``: seconds since the epoch, for windows and expiry (tests);
    without it a guard on a Redis ledger takes both from the server's
    clock: this host's clock plus the offset Redis's ``TIME`` shows,
    measured when the guard is built and about every minute by the
    background reader, so a host whose clock is off neither expires
    others' holds nor charges another day's window.
    ``outside_scope``: ``"global"`` charges calls made outside any
    ``budget_scope`` (and without ``user=``) to the global budget only;
    ``"refuse"`` refuses them.
    ``reported_cost``: a response that states its own cost (OpenRouter's
    ``usage.cost``, LiteLLM's ``response_cost``) is charged that cost
    (``"use"``, the default; a warning once per model when it differs from
    the price table by more than a quarter) or priced from its tokens with
    the price table (``"ignore"``).
    ``outbox_size``: how many charges the ledger could not take (a settle or
    a direct charge that failed with ``StorageError`` after the call ran)
    this process keeps to write again, on the next ledger operation, at
    ``close()`` and at exit; see ``budgetguard._outbox`` for the rule. A
    charge that finds it full is dropped, logged at ``ERROR`` and counted.
    ``spans=True`` puts each call's budget outcome and cost on OpenTelemetry
    spans (``budgetguard.telemetry.Spans``; pass ``Spans(own_spans=True, ...)``
    for its options). ``telemetry_options`` passes the metrics' other options
    (``max_models``, ``tag_keys``, ``max_tag_values``, ``latest_conventions``,
    ``aggregate``) to ``budgetguard.telemetry.Telemetry``.
    ``leases=True`` (or a mapping of ``LeasedLedger`` options: ``slice_fraction``,
    ``ttl``, ``flush``) takes slices of a shared ledger's budgets and admits
    calls against them in this process, one round trip per slice instead of
    two per call; see ``budgetguard.ledger.leases`` for the bound it keeps.
    """

    def __init__(
        self,
        ledger: str | Ledger = "memory://",
        *,
        tz: object = "UTC",
        reservation_ttl: float = 900.0,
        budget_cache_ttl: float | None = None,
        on_storage_error: StoragePolicy = "fail_closed",
        on_missing_cost: MissingCostPolicy = "estimate",
        on_missing_estimate: MissingEstimatePolicy = "learn",
        on_unknown_model: UnknownModelPolicy = "fallback",
        fallback_price: tuple[object, object] = FALLBACK_PRICE,
        outside_scope: OutsideScopePolicy = "global",
        reported_cost: Literal["use", "ignore"] = "use",
        default_output_tokens: int = 1024,
        alert_thresholds: Iterable[object] = (),
        on_threshold: Callable[[ThresholdCrossing], object] | None = None,
        metrics: bool = True,
        meter_provider: Any = None,
        user_attribute: Literal["off", "raw", "hashed"] = "off",
        user_salt: str | None = None,
        max_users: int = 100,
        clock: Callable[[], float] | None = None,
        outbox_size: int = DEFAULT_OUTBOX_SIZE,
        spans: object = False,
        telemetry_options: Mapping[str, Any] | None = None,
        leases: bool | Mapping[str, Any] | None = None,
    ) -> None:
        _check_choice("on_storage_error", on_storage_error, _STORAGE_POLICIES)
        _check_choice("on_missing_cost", on_missing_cost, _MISSING_COST_POLICIES)
        _check_choice("on_missing_estimate", on_missing_estimate, MISSING_ESTIMATE_POLICIES)
        _check_choice("on_unknown_model", on_unknown_model, _UNKNOWN_MODEL_POLICIES)
        _check_choice("outside_scope", outside_scope, _OUTSIDE_SCOPE_POLICIES)
        _check_choice("reported_cost", reported_cost, ("use", "ignore"))
        tracer = _spans_listener(spans)
        telemetry_settings = _telemetry_options(telemetry_options)
        if telemetry_options is not None and not metrics:
            raise ConfigurationError(
                "telemetry_options configures the metrics, but metrics=False turns them off"
            )
        if not reservation_ttl > 0 or reservation_ttl == float("inf"):
            raise ConfigurationError(
                f"reservation_ttl must be a positive finite number of seconds, "
                f"got {reservation_ttl!r}"
            )
        if isinstance(default_output_tokens, bool) or not isinstance(default_output_tokens, int):
            raise ConfigurationError(
                f"default_output_tokens must be a whole number, got {default_output_tokens!r}"
            )
        if default_output_tokens < 0:
            raise ConfigurationError(
                f"default_output_tokens must be 0 or more, got {default_output_tokens!r}"
            )
        if isinstance(outbox_size, bool) or not isinstance(outbox_size, int) or outbox_size < 0:
            raise ConfigurationError(
                f"outbox_size must be a whole number >= 0, got {outbox_size!r}"
            )
        self.clock: Callable[[], float] = clock or time.time
        if isinstance(ledger, str):
            # Without clock= the ledger keeps its own time (Redis: the server's clock).
            ledger = ledger_from_url(ledger, clock=clock) if clock else ledger_from_url(ledger)
        timekeeper = getattr(ledger, "inner", ledger)  # a leased ledger: the shared one
        if clock is None and getattr(timekeeper, "server_time", False):
            # Windows and expiry by the server's clock (Redis): this host's
            # clock plus the offset measured now and about every minute.
            self.clock = timekeeper.clock
            self._server_clock: Any = timekeeper
            _sync_clock(timekeeper)
        else:
            self._server_clock = None
        self._clock_synced_at = time.monotonic()
        if leases is not None and leases is not False:
            ledger = _leased(ledger, leases)
        self.ledger = ledger
        _check_durability_once(ledger)
        self.tz = parse_tz(tz)
        self.reservation_ttl = float(reservation_ttl)
        # A private ledger sees every change at once; a shared one is re-read
        # at most this often, so another process's set_budget shows up.
        if budget_cache_ttl is None:
            budget_cache_ttl = 1.0 if self.ledger.shared else float("inf")
        self.budget_cache_ttl = float(budget_cache_ttl)
        self.on_storage_error = on_storage_error
        self.on_missing_cost = on_missing_cost
        self.on_missing_estimate = on_missing_estimate
        self.outside_scope = outside_scope
        self._learner = Learner()
        self._pricer = Pricer(
            on_unknown_model, fallback_price, default_output_tokens, self._learner, self.clock
        )
        self._pricer.reported_cost = reported_cost
        self._alerts = Alerts(self, alert_thresholds, on_threshold)
        self._budget_defs: dict[str, Budget] = {}
        self._budgets_loaded_at = float("-inf")
        self._cache_lock = threading.Lock()
        self._budget_reads = _BudgetReads()
        self._planner = Planner(self.tz)
        self._ids = itertools.count(1)
        self._id_prefix = f"{_process_tag}.{id(self):x}."
        self._listeners: list[Listener] = []
        self._outbox = Outbox(outbox_size)
        # What reads the current span as a call begins; set while a listener
        # traces calls (``Spans``), else None: no span lookup per call.
        self._current_span: Callable[[], Any] | None = None
        self._outcomes = OutcomeParts()
        self.telemetry: Any = None
        _guards.add(self)
        if metrics:
            from .telemetry import Telemetry

            self.telemetry = Telemetry(
                self,
                meter_provider=meter_provider,
                user_attribute=user_attribute,
                user_salt=user_salt,
                max_users=max_users,
                **telemetry_settings,
            )
            self.add_listener(self.telemetry)
        if tracer is not None:
            self.add_listener(tracer)

    def __repr__(self) -> str:
        return f"BudgetGuard(ledger={self.ledger.url!r})"

    # -- settings read by other layers -----------------------------------------------

    @property
    def on_unknown_model(self) -> str:
        """Return what a call to a model with no known price costs (see the class)."""
        return self._pricer.on_unknown_model

    @property
    def fallback_price(self) -> tuple[Decimal, Decimal]:
        """Return the fallback price, dollars per million input and output tokens."""
        return self._pricer.fallback_price

    @property
    def default_output_tokens(self) -> int:
        """Return the output size assumed for a call that sets no limit, before learning."""
        return self._pricer.default_output_tokens

    @property
    def alert_thresholds(self) -> tuple[Decimal, ...]:
        """Return the fractions of a limit at which alerts fire."""
        return self._alerts.thresholds

    # -- budgets -------------------------------------------------------------------

    def set_budget(
        self,
        limit: object,
        *,
        user: str | None = None,
        period: object = None,
        tz: object = None,
        created_at: datetime | None = None,
        tag: str | tuple[str, str] | None = None,
        model: str | None = None,
        provider: str | None = None,
        unit: str = "usd",
        mode: str = "hard",
        parent: str | None = None,
        label: str | None = None,
        sliding: bool = False,
    ) -> Budget:
        """Set the budget of ``user``, or with no user the global budget over all spend.

        ``period`` is ``"daily"``, ``"weekly"``, ``"monthly"``, ``"yearly"``,
        ``None`` (lifetime) or a ``timedelta`` (windows of that length from
        ``created_at``). Changing a limit keeps what was spent in the window.

        Instead of a user, a budget may cap a ``tag`` (``"team=search"``;
        ``"tenant=*"`` gives each value its own), a ``model`` pattern
        (``"gpt-5*"``) or a ``provider``. ``unit`` counts ``usd`` (the
        default), ``input_tokens``, ``output_tokens``, ``tokens``,
        ``requests`` or ``concurrency`` (calls in flight); ``mode`` is
        ``hard`` (refuse), ``soft`` (run and alert) or ``shadow`` (run and
        count the calls it would have refused). ``label`` tells a subject's
        budgets apart (a non-dollar unit is labelled by its unit unless
        given one): ``$5 a day and $50 a month`` are two budgets, one
        labelled. ``parent`` names a budget checked with this one in the
        same reservation (org, then team, then user). ``sliding`` counts the
        previous window's use by the share of it still within one period.
        """
        _check_user(user)
        subject = subject_name(user, tag=tag, model=model, provider=provider)
        return self._store(
            self._name_of(subject, label, unit), limit, period, tz, created_at,
            unit=unit, mode=mode, parent=parent, sliding=sliding,
        )  # fmt: skip

    def set_default_budget(
        self,
        limit: object,
        *,
        period: object = None,
        tz: object = None,
        unit: str = "usd",
        mode: str = "hard",
        parent: str | None = None,
        label: str | None = None,
        sliding: bool = False,
    ) -> Budget:
        """Give every user without a budget of their own this budget (each user separately)."""
        return self._store(
            self._name_of(DEFAULT, label, unit), limit, period, tz, None,
            unit=unit, mode=mode, parent=parent, sliding=sliding,
        )  # fmt: skip

    def boost_budget(
        self,
        limit: object,
        *,
        until: datetime | None = None,
        duration: timedelta | float | None = None,
        user: str | None = None,
        tag: str | tuple[str, str] | None = None,
        model: str | None = None,
        provider: str | None = None,
        default: bool = False,
        unit: str = "usd",
        label: str | None = None,
    ) -> Budget:
        """Raise (or lower) a budget's limit until a time, leaving the budget itself as it is.

        Give ``until`` (an aware datetime) or ``duration`` (a ``timedelta``
        or seconds from now). Once it ends, the budget's own limit applies
        again, with nothing to undo; a new boost replaces the last one.
        """
        _check_user(user)
        subject = subject_name(user, tag=tag, model=model, provider=provider, default=default)
        name = self._name_of(subject, label, unit)
        base = self._known_budgets().get(name)
        if base is None:
            raise ValueError(f"there is no budget {name!r} to boost; set it first")
        if (until is None) == (duration is None):
            raise ValueError("give a boost either until= (a datetime) or duration=, not both")
        if duration is not None:
            seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not 0 < seconds < 1e10
            ):
                raise ValueError(f"duration must be a positive length of time, got {duration!r}")
            until = datetime.fromtimestamp(self.clock() + seconds, timezone.utc)
        return self._store(
            BOOST + name, limit, base.period.to_json(), base.tz, None, unit=base.unit, until=until
        )

    @staticmethod
    def _name_of(subject: str, label: str | None, unit: str) -> str:
        if label is None and unit != "usd" and unit in UNITS:
            label = unit
        return labelled(label, subject)

    def _store(
        self,
        name: str,
        limit: object,
        period: object,
        tz: object,
        created_at: datetime | None,
        **options: Any,
    ) -> Budget:
        known = self._known_budgets()
        old = known.get(name)
        budget = Budget.create(
            limit,
            name=name,
            period=period,
            tz=self.tz if tz is None else tz,
            # Keep the anchor of fixed-length windows when only the limit changes.
            created_at=created_at
            or (
                old.created_at
                if old is not None
                else datetime.fromtimestamp(self.clock(), timezone.utc)
            ),
            **options,
        )
        if budget.parent is not None:
            _check_ancestry(name, budget.parent, known)
        most = self.ledger.max_units
        if most is not None and budget.limit_units > most:
            shown = f"${from_units(most)}" if budget.unit == "usd" else f"{most} {budget.unit}"
            raise ValueError(
                f"limit {limit!r} is more than the {self.ledger.url.partition(':')[0]} ledger "
                f"holds exactly ({shown} at most); nothing was changed"
            )
        self._guard_storage(self.ledger.put_budget, name, budget.to_dict())
        # Read back what changed since this guard last looked (this write,
        # and others' since): one small read, and the mark this write may
        # have created is accepted as this guard's own.
        self._catch_up(accept=True, written={name: budget})
        return budget

    def _known_budgets(self) -> dict[str, Budget]:
        """Return the definitions; after a loss of the ledger's data, those known before it.

        A guard whose ledger lost its data still sets budgets: that is the way back.
        """
        if self._budget_reads.loss is None:
            try:
                return self._budgets()
            except StorageError:
                if self._budget_reads.loss is None:  # the ledger failed; not a loss
                    raise
        return self._budget_defs

    def get_budget(
        self,
        user: str | None = None,
        *,
        tag: str | tuple[str, str] | None = None,
        model: str | None = None,
        provider: str | None = None,
        unit: str = "usd",
        label: str | None = None,
    ) -> Budget | None:
        """Return the budget set for ``user`` (or the global one), not the default.

        ``tag``, ``model``, ``provider``, ``unit`` and ``label`` name the
        other budgets, as in ``set_budget``.
        """
        subject = subject_name(user, tag=tag, model=model, provider=provider)
        return self._budgets().get(self._name_of(subject, label, unit))

    def get_default_budget(self, *, unit: str = "usd", label: str | None = None) -> Budget | None:
        """Return the default budget for users without one of their own."""
        return self._budgets().get(self._name_of(DEFAULT, label, unit))

    def budget_for(self, user: str | None) -> Budget | None:
        """Return the dollar budget that applies to ``user``: their own, else the default."""
        budgets = self._budgets()
        if user is None:
            return budgets.get(GLOBAL)
        return budgets.get(budget_name(user)) or budgets.get(DEFAULT)

    def delete_budget(
        self,
        user: str | None = None,
        *,
        tag: str | tuple[str, str] | None = None,
        model: str | None = None,
        provider: str | None = None,
        unit: str = "usd",
        label: str | None = None,
        boost: bool = False,
    ) -> bool:
        """Delete the budget of ``user`` (or the global one, or another subject's); spend stays.

        With ``boost=True``, delete only that budget's boost.
        """
        subject = subject_name(user, tag=tag, model=model, provider=provider)
        name = self._name_of(subject, label, unit)
        return self._delete(BOOST + name if boost else name)

    def delete_default_budget(
        self, *, unit: str = "usd", label: str | None = None, boost: bool = False
    ) -> bool:
        """Delete the default budget (with ``boost=True``, only its boost)."""
        name = self._name_of(DEFAULT, label, unit)
        return self._delete(BOOST + name if boost else name)

    def _delete(self, name: str) -> bool:
        deleted = bool(self._guard_storage(self.ledger.delete_budget, name))
        self._catch_up(accept=False, written={name: None})
        return deleted

    def budgets(self) -> list[Budget]:
        """Return every budget: global, default and per user."""
        # A copy first: the definitions are updated in place by other threads.
        return sorted(dict(self._budgets(refresh=True)).values(), key=lambda b: b.name)

    def _budgets(self, refresh: bool = False) -> dict[str, Budget]:
        """Return the budget definitions, re-read as ``budget_cache_ttl`` says.

        The first read, ``refresh=True`` and ``budget_cache_ttl=0`` read on
        the caller's thread (only what changed since the last read). Any
        other re-read that is due runs in this guard's background thread,
        and the caller goes on with what is known: a call never waits for
        it. After the ledger lost its data, a ``fail_closed`` guard raises
        ``StorageError`` here on every call.
        """
        reads = self._budget_reads
        if reads.loss is not None and self.on_storage_error == "fail_closed":
            self._notify("storage_failed", reads.loss, policy=self.on_storage_error)
            raise StorageError(str(reads.loss))  # a new one: tracebacks must not pile up
        now = time.monotonic()
        if not refresh and now - self._budgets_loaded_at < self.budget_cache_ttl:
            return self._budget_defs
        if refresh or not reads.loaded or self.budget_cache_ttl <= 0:
            return self._load_budgets(refresh, now)
        self._budgets_loaded_at = now  # one wake-up per period, not one per call
        reads.wake(self)
        return self._budget_defs

    def _load_budgets(
        self, refresh: bool, now: float, *, background: bool = False
    ) -> dict[str, Budget]:
        """Read what changed since the last read and apply it; the policy decides on failure."""
        try:
            with self._budget_reads.lock:
                changes = self._guard_storage(self.ledger.budget_changes, self._budget_reads.since)
                self._apply_changes(changes, accept=False, now=now)
            self._budget_reads.failing = False
        except StorageError as error:
            if background:
                # Once per outage: the calls themselves report the ledger's state.
                reads = self._budget_reads
                # A read cut short by close() is no outage worth a warning.
                log = logger.debug if reads.failing or reads.stopped else logger.warning
                reads.failing = True
                log("could not re-read the budget definitions: %s", error)
                return self._budget_defs
            if refresh or self.on_storage_error == "fail_closed":
                raise
        if (
            not background
            and self._budget_reads.loss is not None
            and self.on_storage_error == "fail_closed"
        ):
            return self._budgets()  # raises
        return self._budget_defs

    def _catch_up(self, *, accept: bool, written: dict[str, Budget | None]) -> None:
        """Read the changes after this guard's own write; on failure apply the write alone."""
        try:
            with self._budget_reads.lock:
                changes = self._guard_storage(self.ledger.budget_changes, self._budget_reads.since)
                self._apply_changes(changes, accept=accept, now=time.monotonic(), own=written)
        except StorageError as error:
            # The write landed; the read after it did not. Keep the write in
            # the cache; the next read brings the rest.
            logger.warning("could not read the budget definitions back: %s", error)
            with self._cache_lock:
                for name, budget in written.items():
                    self._put_local(name, budget)

    def _apply_changes(
        self,
        changes: BudgetChanges,
        *,
        accept: bool,
        now: float,
        own: Mapping[str, Budget | None] | None = None,
    ) -> None:
        """Apply what ``budget_changes`` returned; a mark that vanished or changed is a loss."""
        reads = self._budget_reads
        known = reads.mark
        if known is not None and changes.mark != known:
            if not accept:
                self._ledger_lost_data(known, changes.mark)
                return
            if reads.loss is None:  # lost and re-created before this guard noticed
                self._ledger_lost_data(known, changes.mark, accepted=True)
            else:
                logger.error(
                    "budgetguard: %s: this guard set a budget, and takes the ledger as it is "
                    "now (mark %s); the definitions and spend lost before stay lost",
                    self.ledger,
                    changes.mark,
                )
            reads.loss = None
        with self._cache_lock:
            if changes.full:
                self._replace_all(changes.changed, own or {})
            else:
                for name, data in changes.changed.items():
                    if own is not None and name in own:
                        self._put_local(name, own[name])
                    else:
                        self._put_local(name, self._read_budget(name, data))
            if changes.mark is not None:
                reads.mark = changes.mark
                reads.since = (changes.mark, changes.version)
            else:  # nothing stored yet, or a backend without marks: read in full
                reads.since = None
            reads.loaded = True
            self._budgets_loaded_at = now

    def _replace_all(
        self, stored: Mapping[str, Mapping[str, Any] | None], own: Mapping[str, Budget | None]
    ) -> None:
        """Take a full read as the definitions (called holding the cache lock)."""
        known_defs = self._budget_defs
        fresh: dict[str, Budget] = {}
        for name, data in stored.items():
            budget = self._read_budget(name, data)
            if budget is None:
                continue
            mine = own.get(name)
            known = mine if mine is not None else known_defs.get(name)
            # Reuse the cached object so its window cache survives.
            fresh[name] = known if known is not None and known.same_definition(budget) else budget
        self._budget_defs = fresh  # a new dict: every cached plan is rebuilt

    def _put_local(self, name: str, budget: Budget | None) -> None:
        """Set or drop one cached definition in place, and the plans it feeds."""
        defs = self._budget_defs
        old = defs.get(name)
        if budget is None:
            if old is None:
                return
            del defs[name]
        elif old is not None and old.same_definition(budget):
            return
        else:
            defs[name] = budget
        self._planner.changed(name)

    @staticmethod
    def _read_budget(name: str, data: Mapping[str, Any] | None) -> Budget | None:
        if data is None:
            return None
        try:
            return Budget.from_dict(name, dict(data))
        except (KeyError, ValueError, ConfigurationError) as error:
            logger.error("ignoring unreadable budget %r in the ledger: %s", name, error)
            return None

    def _ledger_lost_data(self, known: str, mark: str | None, *, accepted: bool = False) -> None:
        """Record that the ledger lost its data: loudly, once per incident."""
        reads = self._budget_reads
        if reads.loss is not None and not accepted:
            return
        what = (
            "its budget definitions are gone"
            if mark is None
            else f"its budget definitions were replaced (mark {known} became {mark})"
        )
        error = StorageError(
            f"the ledger {self.ledger!r} "
            f"lost its data: {what}, by a restart without persistence, eviction or FLUSHALL; "
            "its spend and open reservations are gone too. Re-create the budgets "
            "(set_budget or `budgetguard budgets set`): a guard that sets a budget takes "
            "the ledger as it is then, and other processes do when restarted"
        )
        if accepted:
            logger.error("budgetguard: %s; this guard set a budget, and goes on", error)
            self._notify("storage_failed", error, policy=self.on_storage_error)
            return
        reads.loss = error
        if self.on_storage_error == "fail_closed":
            logger.error("budgetguard: %s; every call is refused until then", error)
            self._budgets_loaded_at = float("-inf")  # every call asks, and is refused
        else:
            logger.error(
                "budgetguard: %s; calls go on (fail_open) against the budgets known before, "
                "from zero spend",
                error,
            )
            self._notify("storage_failed", error, policy=self.on_storage_error)

    def _budgets_due(self) -> bool:
        """Tell whether ``_budgets()`` would read the ledger on the caller's thread."""
        if time.monotonic() - self._budgets_loaded_at < self.budget_cache_ttl:
            return False
        reads = self._budget_reads
        return reads.loss is None and (not reads.loaded or self.budget_cache_ttl <= 0)

    # -- pricing ---------------------------------------------------------------------------

    def estimate_call(self, arguments: Mapping[str, Any]) -> tuple[Decimal, str] | None:
        """Return the projected cost and model of an LLM call from its arguments, or ``None``."""
        return self._pricer.estimate(arguments)

    def _estimate_units(self, arguments: Mapping[str, Any]) -> tuple[int, str] | None:
        """Return ``estimate_call`` in whole ledger units (what a reservation holds)."""
        return self._pricer.estimate_units(arguments)

    def price(self, usage: Any, model: str | None = None) -> tuple[Decimal, bool]:
        """Return the exact cost of ``usage`` and whether its model had a price."""
        return self._pricer.price(usage, model)

    def warn_once(self, topic: str, message: str) -> None:
        """Warn (``warnings`` and the log) about ``topic`` the first time only."""
        self._pricer.warn_once(topic, message)

    # -- recording spend directly ------------------------------------------------------------

    def charge(
        self, amount: object, *, model: str | None = None, user: str | None = None
    ) -> Decimal:
        """Charge ``amount`` dollars: to this guard's call in progress, else record it now.

        Inside a call of this guard (and without ``user=``) the amount is
        added to the call's cost and settled with it. Elsewhere it is recorded
        at once against ``user`` or the current scope's user: never refused
        (the money is spent), but the next call is.
        """
        value = to_decimal(amount, "amount")
        call = _current_call.get()
        if call is not None and call.guard is self and user is None:
            call.add(to_units(value), model)
            return value
        return self.record_spend(value, user=user, model=model)

    def record_spend(
        self,
        amount: object,
        *,
        user: str | None = None,
        model: str | None = None,
        usage: Any = None,
    ) -> Decimal:
        """Record spend that already happened against the current scope's budgets.

        Dollar budgets are charged ``amount``; request budgets one request;
        token budgets the tokens of ``usage`` (a ``Usage``), where given.
        """
        value = to_decimal(amount, "amount")
        scope = current_scope()
        opening = self._open(user, 0, model, scope, None, hooks=False)
        call = Call(
            self,
            opening.user,
            Reservation(self._new_id(), opening.holds, 0.0),
            opening.plan,
            opening.holders,
            0,
            model,
            opening.tags,
        )
        units = to_units(value)
        tallies = self._tally_keys(call, model)
        # Each unit's keys are charged their own amount (a direct charge adds
        # one amount to all its keys); calls in flight are not charged at all.
        counts = (units, 0, 0, 0, 1)
        if usage is not None:
            given, written = usage.total_input_tokens, usage.total_output_tokens
            counts = (units, given, written, given + written, 1)
        for unit, count in enumerate(counts):
            keys = tuple(hold.key for hold in opening.holds if hold.unit == unit)
            if unit == 0:
                keys += tallies
            if keys and count:
                self._charge_once(keys, count, self._new_id("add"), opening.user)
        if self._alerts.thresholds and units:
            self._alerts.check(call)
        self._tell(call, units, _Ending(units, model, None, None, True, False, None))
        return value

    def _charge_once(
        self, keys: tuple[str, ...], units: int, op_id: str, user: str | None = None
    ) -> None:
        """Add ``units`` to ``keys`` exactly once; keep it in the outbox if the ledger fails.

        The write may have run before its reply was lost: writing it again
        with the same id charges it once either way. A charge the outbox has
        no room for raises ``StorageError``.
        """
        if self._outbox.pending:
            self._flush_outbox()
        try:
            self.ledger.add(keys, units, op_id=op_id)
            return
        except StorageError as error:
            self._notify("storage_failed", error, policy=self.on_storage_error)
            if not self._outbox.put(Pending(op_id, units, keys, None, user)):
                raise
            failure = error
        if not self._flush_outbox():  # at once: a lost reply is the likeliest failure
            logger.error(
                "could not record $%s for user %r in the ledger (%s); kept in the outbox, "
                "written again on the next ledger operation",
                from_units(units),
                user,
                failure,
            )

    def _flush_outbox(self, *, final: bool = False) -> bool:
        """Write the charges waiting in the outbox; return whether none is left.

        ``final``: the guard is closing or the process exiting, so whatever
        stays is lost, and logged as such.
        """
        done = self._outbox.flush(self.ledger)
        if final and not done and self._outbox.pending:
            logger.error(
                "budgetguard is closing with %d charges ($%s) the ledger never took: they are lost",
                len(self._outbox),
                from_units(self._outbox.waiting_units()),
            )
        return done

    def record(
        self, response: Any, *, user: str | None = None, model: str | None = None
    ) -> Decimal:
        """Charge a response that was obtained outside any guarded call, from its usage.

        Charged to ``user`` or the current scope's user, on every budget that
        applies. A response without usage raises ``UsageMissingError``.
        """
        usage = extract_usage(response)
        if usage is None:
            raise UsageMissingError(
                f"cannot record a {type(response).__name__}: it carries no usage budgetguard reads"
            )
        cost, priced = self._pricer.price(usage, model)
        self.record_spend(cost, user=user, model=usage.model or model, usage=usage)
        owed = self._pricer.unpriced_error(usage, priced)
        if owed is not None:
            raise owed
        return cost

    # -- scopes and decorators bound to this guard ----------------------------------------------

    def budget_scope(
        self,
        user: str | None = None,
        *,
        limit: object = None,
        tags: Mapping[str, str] | None = None,
    ) -> _budget_scope:
        """Return a ``budget_scope`` bound to this guard: calls and charges inside use it."""
        from .scope import budget_scope

        return budget_scope(user, limit=limit, tags=tags, guard=self)

    def budgeted(self, func: Any = None, /, **options: Any) -> Any:
        """Guard a function with this guard; see ``budgetguard.budgeted``."""
        from .decorators import budgeted

        return budgeted(func, guard=self, **options)

    # -- wiring ----------------------------------------------------------------------------------

    def add_listener(self, listener: Listener) -> None:
        """Tell ``listener`` about every call, refusal, alert and storage failure."""
        if listener not in self._listeners:
            self._listeners.append(listener)
        self._trace_if_asked()

    def remove_listener(self, listener: Listener) -> None:
        """Stop telling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)
        self._trace_if_asked()

    def _trace_if_asked(self) -> None:
        """Read the current span as calls begin only while a listener wants it."""
        if any(getattr(listener, "traces_calls", False) for listener in self._listeners):
            from opentelemetry.trace import get_current_span

            self._current_span = get_current_span
        else:
            self._current_span = None

    def close(self) -> None:
        """Write what waits in the outbox, stop exporting metrics and close the ledger."""
        if self._outbox.pending:
            self._safely(self._flush_outbox, final=True)
        if self.telemetry is not None:
            self.remove_listener(self.telemetry)
            self._safely(self.telemetry.shutdown)
        _guards.discard(self)
        self._budget_reads.stop()
        self.ledger.close()

    def _notify(self, event: str, *args: Any, **kwargs: Any) -> None:
        for listener in self._listeners:
            self._safely(getattr(listener, event), *args, **kwargs)

    @staticmethod
    def _safely(function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        # Listeners observe; a broken exporter must never break the user's call.
        try:
            function(*args, **kwargs)
        except Exception:
            logger.exception("budgetguard listener %r failed", function)

    def _guard_storage(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Run an administrative ledger operation, telling listeners when storage fails."""
        try:
            return operation(*args)
        except StorageError as error:
            self._notify("storage_failed", error, policy=self.on_storage_error)
            raise

    async def _aguard_storage(self, operation: Any) -> Any:
        try:
            return await operation
        except StorageError as error:
            self._notify("storage_failed", error, policy=self.on_storage_error)
            raise

    def _after_fork(self) -> None:
        """Take fresh ids and locks in a forked child; the ledgers reconnect by themselves."""
        self._id_prefix = f"{_process_tag}.{id(self):x}."
        self._ids = itertools.count(1)
        self._cache_lock = threading.Lock()
        self._budget_reads.after_fork()
        # The parent writes the charges it kept; the child must not write them twice.
        self._outbox.forget()
        # A gate held by a parent's thread would stay shut in the child for ever.
        self._learner.after_fork()


class _BudgetReads:
    """What a guard knows of its ledger's budget definitions, and its background reader.

    ``since`` is the ``(mark, version)`` last applied; ``mark`` the last mark
    seen, kept after a loss; ``loss`` the ``StorageError`` of a loss not yet
    accepted. The reader is a daemon thread, started at the first re-read
    that is due, woken once per ``budget_cache_ttl``; it holds the guard only
    weakly, stops in ``close()`` and is started anew in a forked child.
    """

    def __init__(self) -> None:
        self.since: tuple[str, int] | None = None
        self.mark: str | None = None
        self.loss: StorageError | None = None
        self.loaded = False
        self.failing = False  # the last background read failed
        self.lock = threading.Lock()  # one read-and-apply at a time
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def wake(self, guard: BudgetGuard) -> None:
        """Have the background reader re-read ``guard``'s definitions soon."""
        if self._thread is None and not self._stopped:
            thread = threading.Thread(
                target=_read_budgets_in_background,
                args=(weakref.ref(guard), self._wake, self),
                name="budgetguard-budgets",
                daemon=True,
            )
            self._thread = thread
            weakref.finalize(guard, self.signal_stop)
            thread.start()
        self._wake.set()

    def signal_stop(self) -> None:
        """Tell the background reader to end, without waiting for it."""
        self._stopped = True
        self._wake.set()

    def stop(self) -> None:
        """Stop the background reader (it ends after the read in progress, if any)."""
        self.signal_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    def after_fork(self) -> None:
        """In a forked child: no reader thread exists; fresh locks."""
        self.lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    @property
    def stopped(self) -> bool:
        """Tell whether ``stop()`` was called."""
        return self._stopped


def _read_budgets_in_background(
    guard_ref: weakref.ref[BudgetGuard], wake: threading.Event, reads: _BudgetReads
) -> None:
    while True:
        wake.wait()
        wake.clear()
        guard = guard_ref()
        if guard is None or reads.stopped or guard._budget_reads is not reads:
            return
        try:
            now = time.monotonic()
            guard._load_budgets(False, now, background=True)
            if guard._server_clock is not None and now - guard._clock_synced_at >= (
                CLOCK_SYNC_INTERVAL
            ):
                guard._clock_synced_at = now
                _sync_clock(guard._server_clock)
        except Exception:  # the reader must outlive any one failure
            logger.exception("budgetguard: re-reading the budget definitions failed")
        del guard


#: Seconds between two measurements of a server clock's offset.
CLOCK_SYNC_INTERVAL = 60.0


def _sync_clock(ledger: Any) -> None:
    """Measure the offset of the ledger's server clock; keep the last one if it fails."""
    try:
        ledger.sync_clock()
    except StorageError as error:
        logger.debug("could not read the ledger server's clock: %s", error)


def _check_durability_once(ledger: Ledger) -> None:
    """Have a ledger that can (Redis) warn once about settings that can lose budgets."""
    check = getattr(ledger, "check_durability", None)
    if callable(check) and not ledger.__dict__.get("_durability_checked"):
        ledger.__dict__["_durability_checked"] = True
        try:
            check()
        except Exception as error:  # a warning must never stop a guard from starting
            logger.warning("could not check the ledger's durability settings: %s", error)


def charge(amount: object, *, model: str | None = None, user: str | None = None) -> Decimal:
    """Charge ``amount`` dollars for the call in progress, or record it in the current scope.

    Inside a guarded call the amount is added to that call's cost and settled
    with it (``user=`` records it at once for that user instead). Elsewhere it
    is recorded at once, against the current scope's user (or ``user=``), on
    the guard the scope was entered through, else the default guard.
    """
    call = _current_call.get()
    if call is not None:
        return call.guard.charge(amount, model=model, user=user)
    return _guard_in_scope().charge(amount, model=model, user=user)


def _guard_in_scope() -> BudgetGuard:
    """Return the guard of the current scope, else the default guard."""
    scope = _scope_var.get()
    bound = scope.guard if scope is not None else None
    if isinstance(bound, BudgetGuard):
        return bound
    from ._default import default_guard

    return default_guard()


def guard_for(explicit: BudgetGuard | None) -> BudgetGuard:
    """Return ``explicit``, else the guard of the current scope, else the default guard."""
    return explicit if explicit is not None else _guard_in_scope()


# What ``telemetry_options`` may set: the keyword arguments of ``Telemetry``
# that the guard's own arguments do not already cover.
_TELEMETRY_OPTIONS = (
    "aggregate",
    "latest_conventions",
    "max_models",
    "max_tag_values",
    "tag_keys",
)


def _telemetry_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``telemetry_options`` checked: a mapping of known option names."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"telemetry_options must be a mapping of option names to values, not {options!r}"
        )
    unknown = sorted(str(name) for name in options if name not in _TELEMETRY_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown telemetry option(s) {', '.join(unknown)}; known: "
            f"{', '.join(_TELEMETRY_OPTIONS)}"
        )
    return dict(options)


def _spans_listener(spans: object) -> Any:
    """Return the ``Spans`` listener that ``spans=`` asks for, or ``None``."""
    from ._spans import Spans

    if spans is False or spans is None:
        return None
    if spans is True:
        return Spans()
    if isinstance(spans, Spans):
        return spans
    raise ConfigurationError(
        f"spans must be True, False or a budgetguard.telemetry.Spans(...), not {spans!r}"
    )


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _check_user(user: object) -> None:
    if user is not None and not isinstance(user, str):
        raise ValueError(f"user must be a str or None, not {type(user).__name__}")


def _check_ancestry(name: str, parent: str, known: Mapping[str, Budget]) -> None:
    """Refuse a parent that would make ``name`` its own ancestor."""
    seen = {name}
    current: str | None = parent
    while current is not None:
        if current in seen:
            raise ValueError(
                f"budget {name!r} cannot have parent {parent!r}: {current!r} would be "
                "its own ancestor; nothing was changed"
            )
        seen.add(current)
        above = known.get(current)
        current = above.parent if above is not None else None
    if parent == DEFAULT or parent.endswith("=*") or parent.startswith(BOOST):
        raise ValueError(
            f"parent {parent!r} is not one budget (a default or per-value budget has one "
            "window per user or value); name a concrete budget"
        )


def _leased(ledger: Ledger, leases: object) -> Ledger:
    """Wrap a shared ``ledger`` in budget leases (``leases``: True, or LeasedLedger's options)."""
    from .ledger import leased

    if leases is True:
        options: Mapping[str, Any] = {}
    elif isinstance(leases, Mapping):
        options = leases
    else:
        raise ConfigurationError(
            f"leases must be True or a mapping of lease options, not {leases!r}"
        )
    try:
        return leased(ledger, **options)
    except TypeError as error:  # an option LeasedLedger does not take
        raise ConfigurationError(f"unknown lease option: {error}") from None
