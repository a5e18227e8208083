"""idempotency_ttl: how long ended reservation ids and add op ids are remembered, everywhere."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from budgetguard.errors import ConfigurationError
from budgetguard.ledger import Hold, Ledger, Reservation, ledger_from_url

from .conftest import Clock

FAR = 4_000_000_000.0


def held(rid: str, amount: int = 1) -> Reservation:
    """Return a reservation of ``amount`` on key k, far from expiry."""
    return Reservation(rid, (Hold("k", None, amount),), FAR)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory://?idempotency_ttl=30", "'30'"),
        ("memory://?idempotency_ttl=abc", "'abc'"),
        ("sqlite:///{tmp}/a.db?idempotency_ttl=59.9", "'59.9'"),
        ("sqlite:///{tmp}/a.db?idempotency_ttl=inf", "'inf'"),
        ("redis://localhost:6379/0?idempotency_ttl=nan", "'nan'"),
        ("redis://localhost:6379/0?idempotency_ttl=-3600", "'-3600'"),
    ],
)
def test_an_idempotency_ttl_below_a_minute_or_not_a_number_is_refused_at_the_door(
    url: str, shown: str, tmp_path: Path
) -> None:
    """The error names the option and the value; nothing is opened."""
    with pytest.raises(ConfigurationError, match="idempotency_ttl") as raised:
        ledger_from_url(url.format(tmp=tmp_path))
    assert shown in str(raised.value) and "60" in str(raised.value)


@pytest.mark.parametrize("url", ["memory://", "sqlite:///{tmp}/a.db", "redis://localhost:6379/0"])
def test_idempotency_ttl_as_a_keyword_is_checked_too(url: str, tmp_path: Path) -> None:
    """idempotency_ttl=True or 10 as a keyword argument is refused like the URL option."""
    for bad in (True, 10):
        with pytest.raises(ConfigurationError, match="idempotency_ttl"):
            ledger_from_url(url.format(tmp=tmp_path), idempotency_ttl=bad)


@pytest.mark.parametrize("url", ["sqlite:///{tmp}/a.db", "redis://localhost:6379/0"])
def test_ended_ttl_is_the_older_name_and_giving_both_is_refused(url: str, tmp_path: Path) -> None:
    """?ended_ttl= still works; with idempotency_ttl as well it is an error naming both."""
    ledger = ledger_from_url(url.format(tmp=tmp_path) + "?ended_ttl=120")
    assert ledger.idempotency_ttl == 120  # type: ignore[attr-defined]
    ledger.close()
    with pytest.raises(ConfigurationError, match="idempotency_ttl and ended_ttl"):
        ledger_from_url(url.format(tmp=tmp_path) + "?ended_ttl=120&idempotency_ttl=120")


class TestIdempotencyMemory:
    """Ids are remembered at least idempotency_ttl and then forgotten, on every backend."""

    def test_the_default_is_an_hour(self, ledger: Ledger) -> None:
        """Without the option ids are remembered 3,600 s."""
        assert ledger.idempotency_ttl == 3600  # type: ignore[attr-defined]

    def test_ids_are_remembered_for_the_ttl_then_forgotten(
        self, make_ledger: Callable[..., Ledger], clock: Clock
    ) -> None:
        """Within the ttl a repeated settle or add changes nothing; long after, the id is gone."""
        ledger = make_ledger(idempotency_ttl=60)
        r = held("r")
        assert ledger.reserve(r) is None
        assert ledger.settle(r, 5)
        assert ledger.add(["k"], 7, op_id="op")
        clock.advance(59)
        assert ledger.reserve(held("probe1")) is None  # runs the clean-up
        assert not ledger.settle(r, 5)
        assert not ledger.add(["k"], 7, op_id="op")
        assert ledger.balances(["k"])["k"].spent == 12
        for step in range(2):  # memory:// forgets a generation at a time
            clock.advance(3 * 60)
            for i in range(3):  # clean-up is bounded per call; a few calls finish it
                assert ledger.reserve(held(f"later{step}.{i}")) is None
                assert ledger.add(["other"], 1, op_id=f"later{step}.{i}")
        # Forgotten: a retry this late counts again, which is what the ttl bounds.
        assert ledger.add(["k"], 7, op_id="op")
        assert ledger.settle(r, 5)
        assert ledger.balances(["k"])["k"].spent == 24


@pytest.mark.redis
def test_redis_forgets_old_ids_a_bounded_number_per_call(redis_url: str) -> None:
    """Past the ttl each call removes at most 100 old ids, and the sets shrink to what is recent."""
    import redis

    now = [1_700_000_000.0]
    ledger = ledger_from_url(redis_url + "?idempotency_ttl=60", clock=lambda: now[0])
    client = redis.Redis.from_url(redis_url)
    try:
        for i in range(250):
            r = held(f"r{i}")
            ledger.reserve(r)
            ledger.settle(r, 1)
        assert client.zcard("{bg}:settled") == 250
        now[0] += 120
        ledger.reserve(held("next0"))
        assert client.zcard("{bg}:settled") == 150
        ledger.reserve(held("next1"))
        ledger.reserve(held("next2"))
        assert client.zcard("{bg}:settled") == 0
    finally:
        ledger.close()
        client.close()
