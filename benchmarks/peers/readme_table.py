"""Write the README's performance table from a ``run_all.py`` result.

Run::

    python benchmarks/peers/readme_table.py [--json FILE] [--readme FILE] [--check]

Only the text between ``<!-- perf-table:start -->`` and
``<!-- perf-table:end -->`` is replaced; running it twice changes nothing.
``--check`` changes nothing and exits 1 when the README's table is not the
one the JSON makes. Standard library only, so any Python runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "side_by_side.json"
DEFAULT_README = ROOT / "README.md"
START = "<!-- perf-table:start -->"
END = "<!-- perf-table:end -->"


def _us(nanoseconds: float) -> str:
    """Return nanoseconds as microseconds with about three significant figures."""
    micro = nanoseconds / 1000
    if micro < 10:
        return f"{micro:.2f} µs"
    if micro < 100:
        return f"{micro:.1f} µs"
    return f"{micro:,.0f} µs"


def _k(count: float) -> str:
    """Return a count in thousands: 80.5 k."""
    return f"{count / 1000:.1f} k"


def _rate(per_second: float) -> str:
    """Return a rate: 950, 4.3 k."""
    return f"{per_second:,.0f}" if per_second < 1000 else _k(per_second)


def _rates(by_setting: dict[str, float], settings: list[str]) -> str:
    """Return calls per second for each setting, joined: 4.3 k / 3.7 k / 9.1 k."""
    return " / ".join(_rate(by_setting[s]) for s in settings)


def _instructions(section: dict[str, Any], case: str) -> str:
    """Return ``; N k instructions`` for a case callgrind counted, else nothing."""
    counted = section.get("instructions")
    if not counted:
        return ""
    return f"; {_k(counted[case])} instructions"


def _hot_rows(hot: dict[str, Any]) -> list[tuple[str, str, str]]:
    ns = hot["ns_per_call"]
    bare = ns["bare"]
    counted = hot.get("instructions") or {}

    def added(case: str) -> str:
        text = f"{_us(ns[case] - bare)} added"
        if counted:
            text += f"; {_k(counted[case] - counted['bare'])} instructions"
        return text

    return [
        (
            "`@budgeted` call, memory ledger, a user and a global budget, `cost=`, metrics off",
            added("budgeted"),
            f"wrapt's bare wrapper: {added('wrapt')}",
        ),
        (
            "auto-priced `@budgeted` call (`model` + `messages` in, OpenAI `ChatCompletion` out)",
            added("auto_priced"),
            "—",
        ),
        (
            "extract + price one OpenAI response",
            _us(ns["extract_price"]) + _instructions(hot, "extract_price"),
            f"LiteLLM `completion_cost`: {_us(ns['litellm_completion_cost'])}; tokencost, "
            f"given the token counts: {_us(ns['tokencost_by_tokens'])}",
        ),
    ]


def _charge_rows(charge: dict[str, Any]) -> list[tuple[str, str, str]]:
    per_call = charge["per_call"]
    race = charge["race"]
    tools = race["tools"]
    micro = charge["micro_charges"]

    def us(label: str) -> str:
        return f"{per_call[label]['us_per_call']:,.1f} µs"

    def let_through(label: str) -> str:
        row = tools[label]
        return f"{row['admitted']} ({row['overspend']:+d})" if row["overspend"] else "exactly 40"

    def drift(name: str) -> str:
        off = micro[name]["drift"]
        return "exact" if off == 0 else f"off by {off:+.1e}"

    return [
        (
            f"check + charge one call, {charge['calls']:,} gpt-4o-mini responses, 1 thread",
            f"memory {us('budgetguard (memory://)')}, SQLite {us('budgetguard (sqlite)')}",
            f"LiteLLM `BudgetManager` (check, `update_cost`): {us('litellm BudgetManager')}; "
            f"tokencost + a dict: {us('tokencost + dict')}",
        ),
        (
            f"{race['threads']} threads race a budget that fits {race['fits']} calls "
            f"({race['latency_ms']:g} ms calls): calls let through",
            f"memory {let_through('budgetguard (memory://)')}, "
            f"SQLite {let_through('budgetguard (sqlite)')}",
            f"LiteLLM {let_through('litellm BudgetManager')}; "
            f"tokencost + a dict {let_through('tokencost + dict')}",
        ),
        (
            "100,000 charges of $0.000001",
            drift("budgetguard"),
            f"LiteLLM {drift('litellm BudgetManager')}; tokencost {drift('tokencost + dict')}",
        ),
    ]


def _loopback_rows(loopback: dict[str, Any]) -> list[tuple[str, str, str]]:
    wall = loopback["us_per_call"]
    cpu = loopback["cpu_us_per_call"]

    def against(name: str, bare: str) -> str:
        return (
            f"CPU {cpu[name]:,.0f} µs, {cpu[name] / cpu[bare]:.2f}× bare; "
            f"wall {wall[name]:,.0f} µs, {wall[name] / wall[bare]:.2f}×"
        )

    def base(name: str) -> str:
        return f"client CPU {cpu[name]:,.0f} µs, wall {wall[name]:,.0f} µs a call"

    return [
        (
            f"openai `chat.completions.create` on a loopback server (bare: {base('openai bare')})",
            f"instrumented: {against('openai + budgetguard', 'openai bare')}",
            f"OpenLLMetry's instrumentation: {against('openai + OpenLLMetry', 'openai bare')}",
        ),
        (
            f"LangChain `ChatOpenAI.invoke`, same server (bare: {base('ChatOpenAI bare')})",
            f"instrumented: {against('ChatOpenAI + budgetguard', 'ChatOpenAI bare')}",
            "`get_openai_callback()` (counts, no budget): "
            + against("ChatOpenAI + get_openai_callback", "ChatOpenAI bare"),
        ),
    ]


def _redis_rows(redis: dict[str, Any]) -> list[tuple[str, str, str]]:
    rates = redis["calls_per_second"]
    commands = redis["commands_per_call"]
    settings = list(rates["budgetguard"])
    ours = rates["budgetguard"]
    one = rates["limits"]
    ratio = " / ".join(f"{one[s] / ours[s]:.1f}×" for s in settings)
    rows = [
        (
            f"Redis, guarded calls/s, {' / '.join(settings)}, one private server",
            f"{_rates(ours, settings)} ({commands['budgetguard']:.0f} Redis commands a call)",
            f"`limits` fixed window: {_rates(one, settings)} ({commands['limits']:.0f} commands; "
            f"{ratio} budgetguard's); with a user and a global limit: "
            f"{_rates(rates['limits x2'], settings)}",
        )
    ]
    for kind, what in (
        ("budgetguard, settle_delay", "one round trip a call (`settle_delay=0.005`)"),
        ("budgetguard, leases", "with budget leases (`leases=True`)"),
    ):
        if kind not in rates:  # a result from before these were measured
            continue
        theirs = rates[kind]
        if all(theirs[s] > one[s] for s in settings):
            faster = " / ".join(f"{theirs[s] / one[s]:.1f}×" for s in settings)
            beside = f"{faster} `limits`' fixed window's rate, same run"
        else:
            slower = " / ".join(f"{one[s] / theirs[s]:.1f}×" for s in settings)
            beside = f"`limits`' fixed window: {slower} this rate, same run"
        rows.append(
            (
                f"Redis, the same calls, {what}",
                f"{_rates(theirs, settings)} ({commands[kind]:.2g} Redis commands a call)",
                beside,
            )
        )
    return rows


def _sqlite_rows(sqlite: dict[str, Any]) -> list[tuple[str, str, str]]:
    settings = list(sqlite["full"])
    return [
        (
            f"SQLite, guarded calls/s, {' / '.join(settings)}",
            f"FULL {_rates(sqlite['full'], settings)}; NORMAL {_rates(sqlite['normal'], settings)}",
            "—",
        )
    ]


def render(result: dict[str, Any]) -> str:
    """Return the table (and the line saying where it comes from) for a run_all.py result."""
    sections = result["sections"]
    rows: list[tuple[str, str, str]] = []
    for name, make in (
        ("hot", _hot_rows),
        ("charge", _charge_rows),
        ("loopback", _loopback_rows),
        ("redis", _redis_rows),
        ("sqlite", _sqlite_rows),
    ):
        if name in sections:
            rows += make(sections[name])
    meta = result["meta"]
    versions = meta["versions"]
    peers = ", ".join(f"{name} {version}" for name, version in sorted(versions.items()))
    limits = sections.get("redis", {}).get("limits_versions")
    if limits:
        peers += f"; limits {limits['limits']} with redis {limits['redis']} in its own venv"
    lines = [
        "| what | budgetguard | peers, same run |",
        "|---|---|---|",
        *(f"| {what} | {ours} | {theirs} |" for what, ours, theirs in rows),
        "",
        f"One run of `benchmarks/peers/run_all.py`, {meta['date']}: Python {meta['python']}, "
        f"{meta['cpus']} shared CPUs (load average {meta['load_average_at_start'][0]:g} at the "
        f"start); {peers}.",
    ]
    return "\n".join(lines)


def rewrite(text: str, table: str) -> str:
    """Return ``text`` with what lies between the markers replaced by ``table``.

    Raises ``ValueError`` when the markers are missing, doubled, or out of order.
    """
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"the README must hold {START} and {END} exactly once each")
    head, rest = text.split(START)
    if END not in rest:
        raise ValueError(f"{END} comes before {START}")
    _, tail = rest.split(END)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or, with --check, compare) the README's table; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--readme", type=Path, default=DEFAULT_README)
    parser.add_argument("--check", action="store_true", help="change nothing; 1 if stale")
    options = parser.parse_args(argv)
    result = json.loads(options.json.read_text(encoding="utf-8"))
    text = options.readme.read_text(encoding="utf-8")
    new = rewrite(text, render(result))
    if options.check:
        if new != text:
            print(f"{options.readme}: the performance table is not the one {options.json} makes")
            return 1
        return 0
    if new != text:
        options.readme.write_text(new, encoding="utf-8")
        print(f"{options.readme}: performance table rewritten from {options.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
