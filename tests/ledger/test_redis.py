"""What only the Redis ledger does: key layout, scripts, options."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from budgetguard.ledger import Balance, Hold, Reservation, ledger_from_url
from budgetguard.ledger import redis as redis_ledger
from budgetguard.ledger.redis import RedisLedger, redact

pytestmark = pytest.mark.redis


def client(url: str) -> object:
    """Return a plain redis-py client for inspecting the server."""
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def test_every_key_shares_one_hash_tag(redis_url: str) -> None:
    """All keys of a ledger carry {bg} (or {bg:prefix}), so Cluster keeps them in one slot."""
    for prefix, tag in (("", "{bg}"), ("tenant1", "{bg:tenant1}")):
        ledger = RedisLedger(redis_url, prefix=prefix)
        r = Reservation(f"r-{prefix}", (Hold("user", 100, 5),), time.time() + 60)
        ledger.reserve(r)
        ledger.reserve(Reservation(f"o-{prefix}", (Hold("user", 100, 5),), time.time() + 60))
        ledger.settle(r, 3)
        ledger.put_budget("b", {"limit": "1"})
        ledger.close()
        keys = [k for k in client(redis_url).keys("*") if tag in k]  # type: ignore[attr-defined]
        assert keys and all(k.startswith(tag + ":") for k in keys)


def test_prefixes_are_separate_ledgers(redis_url: str) -> None:
    """Two prefixes on one database do not see each other's spend or budgets."""
    a = ledger_from_url(redis_url + "?prefix=a")
    b = ledger_from_url(redis_url, prefix="b")
    a.add(["k"], 5)
    a.put_budget("x", {"limit": "1"})
    assert b.balances(["k"])["k"] == Balance()
    assert b.list_budgets() == {}
    assert a.balances(["k"])["k"] == Balance(5, 0)


def test_scripts_reload_after_script_flush(redis_url: str) -> None:
    """NOSCRIPT (a restarted or flushed server) makes the ledger load its scripts again."""
    ledger = ledger_from_url(redis_url)
    ledger.add(["k"], 1)
    client(redis_url).script_flush()  # type: ignore[attr-defined]
    ledger.add(["k"], 1)
    assert ledger.balances(["k"])["k"] == Balance(2, 0)


async def test_async_scripts_reload_after_script_flush(redis_url: str) -> None:
    """The asyncio client reloads its scripts on NOSCRIPT too."""
    ledger = ledger_from_url(redis_url)
    await ledger.aadd(["k"], 1)
    client(redis_url).script_flush()  # type: ignore[attr-defined]
    await ledger.aadd(["k"], 1)
    assert await ledger.abalances(["k"]) == {"k": Balance(2, 0)}
    await ledger.aclose()


def test_scripts_take_the_servers_clock_unless_the_ledger_was_given_one(redis_url: str) -> None:
    """Without clock= every script reads TIME on the server; with one, the scripts get its time."""
    assert all("now_of(" in source for source in redis_ledger._SCRIPTS.values())
    assert RedisLedger(redis_url).server_time
    assert not RedisLedger(redis_url, clock=time.time).server_time


def test_no_float_increments() -> None:
    """Units are added as integers; INCRBYFLOAT never appears."""
    source = Path(redis_ledger.__file__).read_text()
    assert "INCRBYFLOAT" not in source.replace("``INCRBYFLOAT`` is never used", "")


def test_amounts_past_two_to_the_53_are_refused(redis_url: str) -> None:
    """Lua counts exactly only up to 2**53: larger amounts raise ValueError."""
    ledger = ledger_from_url(redis_url)
    with pytest.raises(ValueError, match="too large"):
        ledger.add(["k"], 2**53)
    with pytest.raises(ValueError, match="too large"):
        ledger.reserve(Reservation("r", (Hold("k", 2**60, 1),), time.time() + 60))


def test_redact_hides_passwords() -> None:
    """Passwords in the authority or the query never reach messages."""
    assert redact("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("redis://:pw@host/0") == "redis://:***@host/0"
    assert redact("unix:///tmp/r.sock?db=1&password=pw") == "unix:///tmp/r.sock?db=1&password=***"
    assert "pw" not in redact("rediss://u:pw@h:1/0?password=pw")
    assert redact("redis://host/0") == "redis://host/0"


def test_ended_ids_are_pruned(redis_url: str) -> None:
    """Settled and released ids are forgotten after ended_ttl on the ledger's clock."""
    now = [1000.0]
    ledger = RedisLedger(redis_url + "?ended_ttl=60", clock=lambda: now[0])
    for i in range(5):
        ledger.settle(Reservation(f"r{i}", (Hold("k", None, 1),), 2000), 1)
    for i in range(3):
        ledger.release(Reservation(f"x{i}", (Hold("k", None, 1),), 2000))
    now[0] += 61
    # Each reserve forgets old settled ids, each release old released ones.
    ledger.reserve(Reservation("fresh", (Hold("k", None, 1),), 5000))
    assert client(redis_url).zcard("{bg}:settled") == 0  # type: ignore[attr-defined]
    ledger.release(Reservation("gone", (Hold("k", None, 1),), 5000))
    assert client(redis_url).zrange("{bg}:released", 0, -1) == ["gone"]  # type: ignore[attr-defined]


def test_interrupt_between_send_and_reply_never_desyncs(redis_url: str) -> None:
    """A command cut short after it was sent leaves no late reply for the next command to read."""
    ledger = RedisLedger(redis_url)
    ledger.add(["k"], 1)
    link = ledger._link()
    real = link.conn.read_response
    calls = [0]

    def interrupted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 1:
            raise KeyboardInterrupt  # the reply is still on its way
        return real(*args, **kwargs)

    link.conn.read_response = interrupted
    with pytest.raises(KeyboardInterrupt):
        ledger.add(["k"], 5, op_id="a")
    # The late reply of the cut command is never taken for this one's.
    assert ledger.balances(["k", "other"]) == {"k": Balance(6, 0), "other": Balance()}
    assert ledger.add(["k"], 5, op_id="a") is False  # it ran once, on the server
    assert ledger.list_budgets() == {}
    ledger.close()


@pytest.mark.parametrize("raised", [TypeError("bad reply"), ValueError("invalid literal")])
def test_raw_driver_errors_become_storage_errors(redis_url: str, raised: Exception) -> None:
    """A TypeError or ValueError from redis-py reading a reply is a StorageError; nothing held."""
    from budgetguard.errors import StorageError

    ledger = RedisLedger(redis_url)
    ledger.add(["k"], 1)
    link = ledger._link()
    real = link.conn.read_response

    def broken(*args: object, **kwargs: object) -> object:
        link.conn.read_response = real
        raise raised

    link.conn.read_response = broken
    with pytest.raises(StorageError, match=type(raised).__name__):
        ledger.reserve(Reservation("r", (Hold("k", 100, 5),), time.time() + 60))
    # The reserve may have run: it was released, so nothing is held.
    assert ledger.balances(["k"])["k"] == Balance(1, 0)
    assert ledger.open_reservations() == []
    ledger.close()


def test_reply_of_the_wrong_shape_is_a_storage_error(redis_url: str) -> None:
    """A script reply that cannot be read (wrong server, tampered script) is a StorageError."""
    from budgetguard.errors import StorageError

    ledger = RedisLedger(redis_url)
    ledger._run = lambda name, args, deadline=None, carry="new": "OK"  # type: ignore[method-assign]
    with pytest.raises(StorageError, match="unexpected reply"):
        ledger.settle(Reservation("r", (Hold("k", 100, 5),), time.time() + 60), 1)
    with pytest.raises(StorageError, match="unexpected reply"):
        ledger.balances(["k"])
    ledger.close()


def test_no_redis_py_retry_is_configured(redis_url: str) -> None:
    """Connections are built with zero retries: a lost reply is never re-sent by redis-py."""
    ledger = RedisLedger(redis_url)
    retry = ledger._link().conn.retry
    assert retry.get_retries() == 0
    ledger.close()


def test_add_op_ids_are_pruned(redis_url: str) -> None:
    """Op ids of add are forgotten after ended_ttl on the ledger's clock."""
    now = [1000.0]
    ledger = RedisLedger(redis_url + "?ended_ttl=60", clock=lambda: now[0])
    for i in range(5):
        ledger.add(["k"], 1, op_id=f"op{i}")
    now[0] += 61
    ledger.add(["k"], 1, op_id="fresh")
    assert client(redis_url).zcard("{bg}:added") == 1  # type: ignore[attr-defined]
    ledger.close()


def test_release_of_a_settled_id_does_not_unsettle_it(redis_url: str) -> None:
    """Releasing an id that already settled changes nothing: a second settle is still ignored."""
    ledger = RedisLedger(redis_url)
    r = Reservation("r", (Hold("k", 100, 5),), time.time() + 60)
    ledger.reserve(r)
    assert ledger.settle(r, 3) is True
    assert ledger.release(r) is False
    assert ledger.settle(r, 3) is False
    assert ledger.balances(["k"])["k"] == Balance(3, 0)
    ledger.close()


def test_reserve_script_refuses_a_nan_expiry_before_writing(redis_url: str) -> None:
    """The reserve script checks the expiry before any write (a failed script keeps its writes)."""
    from budgetguard.errors import StorageError

    ledger = RedisLedger(redis_url)
    args = ledger._reserve_args(Reservation("r", (Hold("k", 100, 5),), time.time() + 60))
    args[2] = "nan"  # what a client without the check would send
    with pytest.raises(StorageError, match="finite"):
        ledger._run("reserve", args)
    assert ledger.balances(["k"])["k"] == Balance()
    assert ledger.open_reservations() == []
    ledger.close()


def test_durability_check_names_eviction_and_missing_persistence(redis_url: str) -> None:
    """check_durability warns when keys may be evicted or a restart would lose everything."""
    ledger = RedisLedger(redis_url)
    admin = client(redis_url)
    before = admin.config_get("maxmemory-policy")["maxmemory-policy"]  # type: ignore[attr-defined]
    admin.config_set("maxmemory-policy", "allkeys-lru")  # type: ignore[attr-defined]
    try:
        problems = ledger.check_durability()
    finally:
        admin.config_set("maxmemory-policy", before)  # type: ignore[attr-defined]
    assert any("allkeys-lru" in p and "noeviction" in p for p in problems)
    # This session's server runs without persistence (--save "" --appendonly no).
    persistent = admin.config_get("appendonly")["appendonly"] == "yes" or bool(  # type: ignore[attr-defined]
        admin.config_get("save")["save"]  # type: ignore[attr-defined]
    )
    assert any("persistence is off" in p for p in problems) != persistent
    assert not any("maxmemory-policy" in p for p in ledger.check_durability())
    ledger.close()


def test_commands_are_encoded_as_redis_py_would(redis_url: str) -> None:
    """The ledger's own RESP encoder sends the bytes redis-py's encoder would send."""
    import redis.connection

    conn = redis.connection.Connection()  # type: ignore[no-untyped-call]
    commands = [
        ("EVALSHA", "ab" * 20, 6, "{bg}:spent", "ключ", 1.5, 10**15, b"raw"),
        ("PING",),
        # Text only, as the scripts' arguments are, with non-ASCII and empty ones.
        ("EVALSHA", "ab" * 20, "2", "{bg}:spent", "ключ", "", "1.5", "😀", "10"),
    ]
    packed = conn.pack_commands(commands)  # type: ignore[no-untyped-call]
    assert redis_ledger._packed(commands) == b"".join(packed)
    head = redis_ledger._Encoded.of("EVALSHA", "ab" * 20, 2, "k1", "k2")
    assert redis_ledger._packed([(head, "x", 3)]) == redis_ledger._packed(
        [("EVALSHA", "ab" * 20, 2, "k1", "k2", "x", 3)]
    )
    assert redis_ledger._packed([(head, "x", "ключ")]) == redis_ledger._packed(
        [("EVALSHA", "ab" * 20, 2, "k1", "k2", "x", "ключ")]
    )
    with pytest.raises(TypeError, match="cannot send NoneType"):
        redis_ledger._packed([("GET", None)])


# A guarded call's tallies (budgetguard/_keys.py): a settle adds to these later, in one group.
GROUPED = (
    "t|",
    "t|u=alice",
    "t|m=gpt-4o",
    "t|u=alice|m=gpt-4o",
    "d|2026-12-02|u=alice|m=gpt-4o",
    "b|user:alice|2026-12|m=gpt-4o",
    "d|2026-12-02|g=team=ключ",
)


def test_a_settles_report_tallies_are_one_command_and_every_read_sees_them(
    redis_url: str,
) -> None:
    """A settle's report tallies wait as one group; balances, scan and reserve see them added."""
    ledger = RedisLedger(redis_url)
    admin = client(redis_url)
    for i, tallies in enumerate((GROUPED, [*GROUPED, "plain"], GROUPED[:2])):
        r = Reservation(f"r{i}", (Hold("b|user:alice|2026-12", 100, 5),), time.time() + 60)
        ledger.reserve(r)
        assert ledger.settle(r, 3, tallies)
    # Two groups wait (the first and second settles share one); "plain" was added at once.
    assert admin.hlen("{bg}:tallies") == 2  # type: ignore[attr-defined]
    assert admin.hget("{bg}:spent", "plain") == "3"  # type: ignore[attr-defined]
    assert admin.hget("{bg}:spent", "t|") is None  # type: ignore[attr-defined]
    expected = {key: Balance(6, 0) for key in GROUPED[2:]}
    expected.update({"t|": Balance(9, 0), "t|u=alice": Balance(9, 0)})
    assert ledger.balances(list(GROUPED)) == expected
    assert admin.exists("{bg}:tallies") == 0  # type: ignore[attr-defined]
    assert ledger.scan("t|") == {k: v for k, v in expected.items() if k.startswith("t|")}
    # A budget on a key of that shape (no guard holds one) is checked against them too.
    r = Reservation("r9", (Hold("t|u=alice", 10, 1),), time.time() + 60)
    ledger.settle(Reservation("r8", (), time.time() + 60), 1, ("t|u=alice",))
    assert ledger.reserve(r) is not None  # 9 + 1 spent: no room for 1 more
    assert ledger.balances(["t|u=alice"])["t|u=alice"] == Balance(10, 0)
    ledger.close()


def test_scan_and_clear_see_waiting_tallies(redis_url: str) -> None:
    """scan folds waiting tallies; clear forgets them with the key, and no read brings them back."""
    ledger = RedisLedger(redis_url)
    ledger.settle(Reservation("a", (), time.time() + 60), 4, GROUPED)
    assert ledger.scan("d|2026-12-02|") == {
        "d|2026-12-02|u=alice|m=gpt-4o": Balance(4, 0),
        "d|2026-12-02|g=team=ключ": Balance(4, 0),
    }
    ledger.settle(Reservation("b", (), time.time() + 60), 2, GROUPED)
    ledger.clear(["d|2026-12-02|u=alice|m=gpt-4o"])
    assert ledger.balances(["d|2026-12-02|u=alice|m=gpt-4o", "t|"]) == {
        "d|2026-12-02|u=alice|m=gpt-4o": Balance(),
        "t|": Balance(6, 0),
    }
    assert "d|2026-12-02|u=alice|m=gpt-4o" not in ledger.scan("")
    ledger.close()


def test_many_waiting_groups_are_folded_a_batch_at_a_time(redis_url: str) -> None:
    """More groups than expire_batch: reads call again until every group is added, once each."""
    ledger = RedisLedger(redis_url, expire_batch=2)
    # Long keys: the hash leaves its compact encoding, so HSCAN returns it a page at a time.
    users = [f"t|u={'x' * 70}{i}" for i in range(7)]
    for i, user in enumerate(users):
        ledger.settle(Reservation(f"r{i}", (), time.time() + 60), 1, ("t|", user))
    admin = client(redis_url)
    assert admin.hlen("{bg}:tallies") == 7  # type: ignore[attr-defined]
    assert admin.object("encoding", "{bg}:tallies") == "hashtable"  # type: ignore[attr-defined]
    assert ledger.balances(["t|", *users]) == {"t|": Balance(7, 0)} | {
        user: Balance(1, 0) for user in users
    }
    for i, user in enumerate(users):
        ledger.settle(Reservation(f"s{i}", (), time.time() + 60), 1, ("t|", user))
    ledger.clear(users)
    assert ledger.scan("t|") == {"t|": Balance(14, 0)}
    ledger.close()


def test_a_retried_settle_adds_its_grouped_tallies_once(redis_url: str) -> None:
    """The settled mark covers the group: a settle repeated (directly or queued) adds once."""
    for delay in ("0", "0.2"):
        ledger = RedisLedger(redis_url + f"?settle_delay={delay}", prefix=f"d{delay}")
        r = Reservation("r", (Hold("b|global|2026-12", 100, 5),), time.time() + 60)
        ledger.reserve(r)
        ledger.settle(r, 3, GROUPED)
        ledger.balances([])  # a read carries the queued settle
        ledger._queue.landed.clear()  # forget it in this process: only Redis knows
        ledger.settle(r, 3, GROUPED)
        ledger.balances([])
        assert ledger.settle(r, 3, GROUPED) is False
        assert ledger.balances(["t|", "b|global|2026-12"]) == {
            "t|": Balance(3, 0),
            "b|global|2026-12": Balance(3, 0),
        }
        ledger.close()


def test_data_of_the_previous_layout_reads_and_settles_right(redis_url: str) -> None:
    """Tallies and holds the previous version wrote (every tally its own field) still count."""
    admin = client(redis_url)
    # What the previous version left: tallies added one by one, an open hold.
    for key in GROUPED:
        admin.hincrby("{bg}:spent", key, 7)  # type: ignore[attr-defined]
    admin.hincrby("{bg}:spent", "b|user:alice|2026-12", 7)  # type: ignore[attr-defined]
    admin.hincrby("{bg}:reserved", "b|user:alice|2026-12", 5)  # type: ignore[attr-defined]
    admin.hset("{bg}:holds", "old", '[["b|user:alice|2026-12", "100", "5"]]')  # type: ignore[attr-defined]
    admin.zadd("{bg}:open", {"old": time.time() + 60})  # type: ignore[attr-defined]
    ledger = RedisLedger(redis_url)
    old = ledger.open_reservations()[0]
    assert old.id == "old"
    assert ledger.settle(old, 2, GROUPED)
    assert ledger.balances([*GROUPED, "b|user:alice|2026-12"]) == {
        **{key: Balance(9, 0) for key in GROUPED},
        "b|user:alice|2026-12": Balance(9, 0),
    }
    assert ledger.scan("t|u=") == {"t|u=alice": Balance(9, 0), "t|u=alice|m=gpt-4o": Balance(9, 0)}
    ledger.close()


def test_clear_drops_reserved_fields_a_settle_left_at_zero(redis_url: str) -> None:
    """A settle leaves an emptied reserved field at 0 (one command less); clear drops it."""
    ledger = RedisLedger(redis_url)
    admin = client(redis_url)
    held = Reservation("h", (Hold("k", 100, 5),), time.time() + 60)
    ledger.reserve(held)
    for i in range(2):
        r = Reservation(f"r{i}", (Hold("idle", 100, 5),), time.time() + 60)
        ledger.reserve(r)
        ledger.settle(r, 3)
    assert admin.hget("{bg}:reserved", "idle") == "0"  # type: ignore[attr-defined]
    assert ledger.scan("") == {"idle": Balance(6, 0), "k": Balance(0, 5)}
    ledger.clear(["idle", "k"])
    assert admin.hexists("{bg}:reserved", "idle") == 0  # type: ignore[attr-defined]
    assert ledger.balances(["k"]) == {"k": Balance(0, 5)}  # open holds stay held
    ledger.close()


def test_a_call_that_fits_leaves_expired_holds_for_later(redis_url: str) -> None:
    """A reserve that fits skips expiry (one command less); a refusal releases and checks again."""
    now = [1000.0]
    ledger = RedisLedger(redis_url, clock=lambda: now[0])
    ledger.reserve(Reservation("old", (Hold("k", 10, 6),), 1010))
    now[0] += 20
    assert ledger.reserve(Reservation("a", (Hold("k", 10, 1),), 2000)) is None
    assert client(redis_url).zscore("{bg}:open", "old") == 1010  # type: ignore[attr-defined]
    assert ledger.reserve(Reservation("b", (Hold("k", 10, 8),), 2000)) is None
    assert ledger.balances(["k"]) == {"k": Balance(0, 9)}
    with pytest.raises(ValueError, match="used before"):
        ledger.reserve(Reservation("old", (Hold("k", 10, 1),), 2000))
    ledger.close()


def test_old_settled_ids_are_forgotten_on_the_servers_clock_too(redis_url: str) -> None:
    """With TIME, about one reserve in ten trims settled ids (100 at most): 300 clear 150."""
    ledger = RedisLedger(redis_url + "?idempotency_ttl=60")
    admin = client(redis_url)
    admin.zadd("{bg}:settled", {f"old{i}": 1000.0 + i for i in range(150)})  # type: ignore[attr-defined]
    admin.zadd("{bg}:settled", {"recent": time.time()})  # type: ignore[attr-defined]
    trims = 0
    for i in range(300):
        before = admin.zcard("{bg}:settled")  # type: ignore[attr-defined]
        ledger.reserve(Reservation(f"r{i}", (Hold("k", None, 1),), time.time() + 60))
        after = admin.zcard("{bg}:settled")  # type: ignore[attr-defined]
        assert before - after <= 100
        trims += before != after
    assert admin.zrange("{bg}:settled", 0, -1) == ["recent"]  # type: ignore[attr-defined]
    assert trims >= 2
    ledger.close()


def test_an_expired_open_id_is_used_even_when_a_soft_hold_sends_the_reserve_to_expiry(
    redis_url: str,
) -> None:
    """A soft hold that does not fit releases expired holds; the id they free stays used."""
    now = [1000.0]
    ledger = RedisLedger(redis_url, clock=lambda: now[0])
    soft = Hold("k", 10, 20, over="x|k")
    assert ledger.reserve(Reservation("r", (soft,), 1010)) is None
    now[0] += 20
    with pytest.raises(ValueError, match="used before"):
        ledger.reserve(Reservation("r", (soft,), 2000))
    assert ledger.balances(["k", "x|k"]) == {"k": Balance(), "x|k": Balance(1, 0)}
    ledger.close()
