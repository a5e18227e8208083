"""budget_changes on every backend: the mark, versions, incremental reads, deletions."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from budgetguard.ledger import BudgetChanges, Ledger, ledger_from_url
from budgetguard.ledger.base import TOMBSTONE_SECONDS
from budgetguard.ledger.memory import MemoryLedger

from .conftest import Clock


class TestBudgetChanges:
    """The conformance suite for incremental reads of budget definitions."""

    def test_an_empty_ledger_has_no_mark(self, ledger: Ledger) -> None:
        """Before any definition is stored there is no mark, and a full read finds nothing."""
        assert ledger.budget_changes(None) == BudgetChanges(None, 0, {}, True)

    def test_the_first_definition_writes_a_mark_and_every_change_a_version(
        self, ledger: Ledger
    ) -> None:
        """put_budget writes the mark with the first definition; puts and deletes count up."""
        ledger.put_budget("a", {"limit": "1"})
        first = ledger.budget_changes(None)
        assert first.mark and first.full and first.changed == {"a": {"limit": "1"}}
        ledger.put_budget("b", {"limit": "2"})
        ledger.delete_budget("a")
        later = ledger.budget_changes(None)
        assert later.mark == first.mark
        assert later.version == first.version + 2
        assert later.changed == {"b": {"limit": "2"}}

    def test_changes_since_a_version_hold_only_what_changed_after_it(self, ledger: Ledger) -> None:
        """A reader that saw (mark, version) gets the later puts, and None for the deletions."""
        ledger.put_budget("a", {"limit": "1"})
        ledger.put_budget("b", {"limit": "2"})
        seen = ledger.budget_changes(None)
        assert ledger.budget_changes((seen.mark or "", seen.version)) == BudgetChanges(
            seen.mark, seen.version, {}, False
        )
        ledger.put_budget("b", {"limit": "3"})
        ledger.put_budget("c", {"limit": "4"})
        ledger.delete_budget("a")
        changes = ledger.budget_changes((seen.mark or "", seen.version))
        assert not changes.full
        assert changes.version == seen.version + 3
        assert changes.changed == {"a": None, "b": {"limit": "3"}, "c": {"limit": "4"}}

    def test_a_deleted_then_recreated_definition_is_reported_as_it_is_now(
        self, ledger: Ledger
    ) -> None:
        """Deleting and setting a name again since the reader looked gives its new definition."""
        ledger.put_budget("a", {"limit": "1"})
        seen = ledger.budget_changes(None)
        ledger.delete_budget("a")
        ledger.put_budget("a", {"limit": "9"})
        assert ledger.budget_changes((seen.mark or "", seen.version)).changed == {
            "a": {"limit": "9"}
        }

    def test_deleting_an_unknown_name_deletes_nothing(self, ledger: Ledger) -> None:
        """A delete of a name never stored returns False; the definitions and the mark stay."""
        ledger.put_budget("a", {"limit": "1"})
        before = ledger.budget_changes(None)
        assert ledger.delete_budget("nobody") is False
        after = ledger.budget_changes((before.mark or "", before.version))
        assert after.mark == before.mark and after.version >= before.version
        assert after.changed in ({}, {"nobody": None})

    def test_deleting_every_definition_keeps_the_mark(self, ledger: Ledger) -> None:
        """The mark stays while the store exists, even with no definition left in it."""
        ledger.put_budget("a", {"limit": "1"})
        seen = ledger.budget_changes(None)
        ledger.delete_budget("a")
        changes = ledger.budget_changes((seen.mark or "", seen.version))
        assert changes.mark == seen.mark
        assert changes.changed == {"a": None} and not changes.full

    def test_another_mark_or_an_unknown_version_gives_a_full_read(self, ledger: Ledger) -> None:
        """A reader whose mark differs, or who claims a version not reached, reads everything."""
        ledger.put_budget("a", {"limit": "1"})
        seen = ledger.budget_changes(None)
        for since in (("another-mark", seen.version), (seen.mark or "", seen.version + 5)):
            changes = ledger.budget_changes(since)
            assert changes.full and changes.changed == {"a": {"limit": "1"}}
            assert changes.mark == seen.mark

    def test_a_reader_older_than_the_kept_deletions_reads_everything(
        self, ledger: Ledger, clock: Clock
    ) -> None:
        """Deleted names are kept a day; a reader from before one forgotten gets full=True."""
        ledger.put_budget("a", {"limit": "1"})
        ledger.put_budget("b", {"limit": "2"})
        ledger.put_budget("c", {"limit": "3"})
        seen = ledger.budget_changes(None)
        ledger.delete_budget("a")
        clock.advance(TOMBSTONE_SECONDS / 2)
        recent = ledger.budget_changes((seen.mark or "", seen.version))
        assert recent.changed == {"a": None} and not recent.full
        clock.advance(TOMBSTONE_SECONDS / 2 + 60)
        ledger.delete_budget("b")  # a later delete forgets "a"
        stale = ledger.budget_changes((seen.mark or "", seen.version))
        assert stale.full and stale.changed == {"c": {"limit": "3"}}
        fresh = ledger.budget_changes((recent.mark or "", recent.version))
        assert fresh.changed == {"b": None} and not fresh.full

    def test_every_write_of_many_is_seen_once_by_an_incremental_reader(
        self, ledger: Ledger
    ) -> None:
        """Reading after each of many writes, applying the changes, ends where a full read does."""
        known: dict[str, dict[str, Any]] = {}
        since: tuple[str, int] | None = None
        for i in range(150):
            name = f"user:u{i % 40}"
            if i % 7 == 3:
                ledger.delete_budget(name)
            else:
                ledger.put_budget(name, {"limit": str(i)})
            changes = ledger.budget_changes(since)
            if changes.full:
                known = {n: d for n, d in changes.changed.items() if d is not None}
            for changed, definition in changes.changed.items():
                if definition is None:
                    known.pop(changed, None)
                else:
                    known[changed] = definition
            since = (changes.mark or "", changes.version)
        assert known == ledger.list_budgets()

    async def test_the_async_read_gives_the_same_changes(self, ledger: Ledger) -> None:
        """abudget_changes answers as budget_changes does."""
        ledger.put_budget("a", {"limit": "1"})
        seen = await ledger.abudget_changes(None)
        ledger.put_budget("b", {"limit": "2"})
        assert await ledger.abudget_changes((seen.mark or "", seen.version)) == (
            ledger.budget_changes((seen.mark or "", seen.version))
        )

    @pytest.mark.shared_only
    def test_another_process_on_the_url_sees_the_same_mark(
        self, make_ledger: Callable[..., Ledger]
    ) -> None:
        """Two ledger objects on one URL agree on the mark and the changes."""
        first, second = make_ledger(), make_ledger()
        first.put_budget("a", {"limit": "1"})
        seen = second.budget_changes(None)
        first.put_budget("b", {"limit": "2"})
        assert second.budget_changes((seen.mark or "", seen.version)).changed == {
            "b": {"limit": "2"}
        }


class ThirdPartyLedger(MemoryLedger):
    """A backend written before budget_changes existed: it overrides nothing new."""

    budget_changes = Ledger.budget_changes


def test_a_backend_without_budget_changes_gets_full_reads_from_list_budgets() -> None:
    """The default budget_changes reads every definition, with no mark, so old backends work."""
    ledger = ThirdPartyLedger()
    ledger.put_budget("a", {"limit": "1"})
    assert ledger.budget_changes(None) == BudgetChanges(None, 0, {"a": {"limit": "1"}}, True)
    assert ledger.budget_changes(("x", 3)).full


def test_an_older_sqlite_file_is_migrated_and_its_definitions_get_a_mark(tmp_path: Path) -> None:
    """A schema-2 file with budgets opens, keeps them, and gains a mark in the migration."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    from budgetguard.ledger.sqlite import MIGRATIONS

    for statements in MIGRATIONS[:2]:
        for statement in statements:
            db.execute(statement)
    db.execute("INSERT INTO budgets (name, definition) VALUES ('global', '{\"limit\": \"5\"}')")
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    ledger = ledger_from_url(f"sqlite:///{path}")
    try:
        changes = ledger.budget_changes(None)
        assert changes.mark and changes.full and changes.changed == {"global": {"limit": "5"}}
        ledger.put_budget("global", {"limit": "6"})
        later = ledger.budget_changes((changes.mark, changes.version))
        assert later.changed == {"global": {"limit": "6"}} and later.mark == changes.mark
    finally:
        ledger.close()


def test_an_empty_older_sqlite_file_gets_its_mark_with_its_first_definition(
    tmp_path: Path,
) -> None:
    """Migrating a file with no budgets writes no mark: the first put_budget does."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    from budgetguard.ledger.sqlite import MIGRATIONS

    for statements in MIGRATIONS[:2]:
        for statement in statements:
            db.execute(statement)
    db.execute("PRAGMA user_version = 2")
    db.commit()
    db.close()
    ledger = ledger_from_url(f"sqlite:///{path}")
    try:
        assert ledger.budget_changes(None).mark is None
        ledger.put_budget("a", {"limit": "1"})
        assert ledger.budget_changes(None).mark
    finally:
        ledger.close()


@pytest.mark.redis
def test_redis_definitions_of_an_older_budgetguard_get_a_mark(redis_url: str) -> None:
    """Definitions stored without a mark (an older release) are marked at the first read."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.hset("{bg}:budgets", "global", '{"limit": "5"}')
    ledger = ledger_from_url(redis_url)
    try:
        changes = ledger.budget_changes(None)
        assert changes.mark and changes.full and changes.changed == {"global": {"limit": "5"}}
        assert ledger.budget_changes(None).mark == changes.mark
        assert ledger.list_budgets() == {"global": {"limit": "5"}}
    finally:
        ledger.close()
        client.close()


@pytest.mark.redis
def test_redis_a_lost_index_gives_a_full_read_and_is_rebuilt(redis_url: str) -> None:
    """The index evicted on its own: the next read is full, with the same mark, then incremental."""
    import redis

    client = redis.Redis.from_url(redis_url)
    ledger = ledger_from_url(redis_url)
    try:
        ledger.put_budget("a", {"limit": "1"})
        ledger.put_budget("b", {"limit": "2"})
        seen = ledger.budget_changes(None)
        client.delete("{bg}:budget_index")
        ledger.delete_budget("a")
        after = ledger.budget_changes((seen.mark or "", seen.version))
        assert after.full and after.mark == seen.mark and after.changed == {"b": {"limit": "2"}}
        ledger.put_budget("c", {"limit": "3"})
        assert ledger.budget_changes((after.mark or "", after.version)) == BudgetChanges(
            after.mark, after.version + 1, {"c": {"limit": "3"}}, False
        )
    finally:
        ledger.close()
        client.close()


@pytest.mark.redis
def test_redis_flushall_takes_the_mark_with_the_definitions(redis_url: str) -> None:
    """After FLUSHALL there is no mark; the next definition writes a new one."""
    import redis

    client = redis.Redis.from_url(redis_url)
    ledger = ledger_from_url(redis_url)
    try:
        ledger.put_budget("a", {"limit": "1"})
        seen = ledger.budget_changes(None)
        client.flushall()
        assert ledger.budget_changes((seen.mark or "", seen.version)) == BudgetChanges(
            None, 0, {}, True
        )
        ledger.put_budget("a", {"limit": "1"})
        fresh = ledger.budget_changes((seen.mark or "", seen.version))
        assert fresh.mark not in (None, seen.mark) and fresh.full
    finally:
        ledger.close()
        client.close()


@pytest.mark.redis
def test_redis_names_starting_with_nul_are_refused(redis_url: str) -> None:
    """The ledger's own fields cannot be overwritten or read as budgets."""
    ledger = ledger_from_url(redis_url)
    try:
        ledger.put_budget("a", {"limit": "1"})
        with pytest.raises(ValueError, match="NUL"):
            ledger.put_budget("\0mark", {"limit": "1"})
        assert ledger.get_budget("\0mark") is None
        assert ledger.delete_budget("\0mark") is False
        assert ledger.budget_changes(None).mark
    finally:
        ledger.close()
