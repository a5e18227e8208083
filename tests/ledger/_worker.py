"""Child process for the cross-process ledger tests (run as a script).

Usage: ``python _worker.py MODE URL [ARGS...]`` where MODE is

- ``race URL N AMOUNT LIMIT GO_FILE``: wait for GO_FILE, then N times reserve
  AMOUNT on key ``user`` (limit LIMIT) and settle it; print the successes.
- ``settle URL ID AMOUNT GO_FILE``: wait for GO_FILE, settle reservation ID
  (holding AMOUNT on ``user``) and print 1 if this process charged it, else 0.
- ``crash URL AMOUNT TTL``: reserve and settle forever, printing each settled
  id, and leaving one reservation open (expiring after TTL seconds) each round.
- ``guard URL N GO_FILE``: N calls of a function budgeted by ``BudgetGuard``
  with estimate 0.01; print how many ran.
- ``lease-race URL N AMOUNT LIMIT FRACTION GO_FILE``: ``race`` through a
  ``LeasedLedger`` (slices of FRACTION of the limit), closed at the end.
- ``lease-guard URL N GO_FILE``: ``guard`` with the guard's ledger leased.
- ``lease-hang URL AMOUNT LIMIT FRACTION TTL FLUSHED UNFLUSHED``: through a
  ``LeasedLedger`` with leases of TTL seconds, settle FLUSHED calls and flush,
  then UNFLUSHED more; print ``ready`` and wait to be killed.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid

from budgetguard.ledger import Hold, Reservation, ledger_from_url


def wait_for(path: str) -> None:
    """Wait until the parent says go, so that every child starts at once."""
    while not os.path.exists(path):
        time.sleep(0.001)


def race(url: str, n: str, amount: str, limit: str, go: str) -> None:
    """Reserve and settle N times; print how many got through."""
    ledger = ledger_from_url(url)
    wait_for(go)
    won = 0
    for _ in range(int(n)):
        r = Reservation(
            uuid.uuid4().hex, (Hold("user", int(limit), int(amount)),), time.time() + 60
        )
        if ledger.reserve(r) is None:
            assert ledger.settle(r, int(amount))
            won += 1
    print(won, flush=True)


def settle(url: str, reservation_id: str, amount: str, go: str) -> None:
    """Settle one reservation; print whether this process charged it."""
    ledger = ledger_from_url(url)
    wait_for(go)
    r = Reservation(reservation_id, (Hold("user", None, int(amount)),), time.time() + 60)
    print(int(ledger.settle(r, int(amount))), flush=True)


def crash(url: str, amount: str, ttl: str) -> None:
    """Charge in a loop until killed, reporting every settle that returned."""
    ledger = ledger_from_url(url)
    while True:
        left_open = Reservation(
            uuid.uuid4().hex, (Hold("held", None, int(amount)),), time.time() + float(ttl)
        )
        ledger.reserve(left_open)
        r = Reservation(uuid.uuid4().hex, (Hold("user", None, int(amount)),), time.time() + 60)
        assert ledger.reserve(r) is None
        assert ledger.settle(r, int(amount))
        print(r.id, flush=True)
        ledger.release(left_open)


def guard(url: str, n: str, go: str) -> None:
    """Make N budgeted calls through a BudgetGuard; print how many ran."""
    from budgetguard import BudgetExceededError
    from budgetguard.guard import BudgetGuard

    bg = BudgetGuard(ledger=url)
    ran = 0

    @bg.budgeted(estimate="0.01")
    def call() -> None:
        nonlocal ran
        ran += 1

    wait_for(go)
    for _ in range(int(n)):
        with contextlib.suppress(BudgetExceededError):
            call()
    print(ran, flush=True)


def lease_race(url: str, n: str, amount: str, limit: str, fraction: str, go: str) -> None:
    """Reserve and settle N times through budget leases; print how many got through."""
    from budgetguard.ledger import LeasedLedger

    ledger = LeasedLedger(ledger_from_url(url), slice_fraction=float(fraction))
    wait_for(go)
    won = 0
    for _ in range(int(n)):
        r = Reservation(
            uuid.uuid4().hex, (Hold("user", int(limit), int(amount)),), time.time() + 60
        )
        if ledger.reserve(r) is None:
            assert ledger.settle(r, int(amount), ("tally",))
            won += 1
    ledger.close()
    print(won, flush=True)


def lease_guard(url: str, n: str, go: str) -> None:
    """Make N budgeted calls through a BudgetGuard over budget leases; print how many ran."""
    from budgetguard import BudgetExceededError
    from budgetguard.guard import BudgetGuard
    from budgetguard.ledger import LeasedLedger

    ledger = LeasedLedger(ledger_from_url(url), slice_fraction=0.1)
    bg = BudgetGuard(ledger=ledger)
    ran = 0

    @bg.budgeted(estimate="0.01")
    def call() -> None:
        nonlocal ran
        ran += 1

    wait_for(go)
    for _ in range(int(n)):
        with contextlib.suppress(BudgetExceededError):
            call()
    ledger.close()
    print(ran, flush=True)


def lease_hang(
    url: str, amount: str, limit: str, fraction: str, ttl: str, flushed: str, unflushed: str
) -> None:
    """Spend through a lease, flush part of it, spend more, then wait to be killed."""
    from budgetguard.ledger import LeasedLedger

    ledger = LeasedLedger(
        ledger_from_url(url),
        slice_fraction=float(fraction),
        ttl=float(ttl),
        flush=float(ttl) / 4,
        background=False,
    )

    def calls(count: int) -> None:
        for _ in range(count):
            r = Reservation(
                uuid.uuid4().hex, (Hold("user", int(limit), int(amount)),), time.time() + 60
            )
            assert ledger.reserve(r) is None
            assert ledger.settle(r, int(amount))

    calls(int(flushed))
    ledger.flush_now()
    calls(int(unflushed))
    print("ready", flush=True)
    while True:
        time.sleep(1)


if __name__ == "__main__":
    modes = {
        "race": race,
        "settle": settle,
        "crash": crash,
        "guard": guard,
        "lease-race": lease_race,
        "lease-guard": lease_guard,
        "lease-hang": lease_hang,
    }
    modes[sys.argv[1]](*sys.argv[2:])
