"""The spend dashboard: one server-rendered page, no scripts from anywhere, no CDN."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from html import escape

from ..money import MONEY
from ..report import Report

__all__ = ["PAGE_HEADERS", "render_dashboard", "render_login"]

#: The page needs nothing from outside: a strict policy keeps injected markup inert.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: Chromium then sends "Origin: null" with the login form.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;
background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:14px 28px;display:flex;align-items:baseline;gap:18px}
header h1{font-size:19px;margin:0}header span{opacity:.75;font-size:13px}
main{padding:20px 28px;max-width:1200px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin-bottom:20px}
.card{background:#fff;border-radius:8px;padding:12px 18px;box-shadow:0 1px 2px #0002;
min-width:150px}
.card b{display:block;font-size:22px}.card small{color:#5b6475}
section{background:#fff;border-radius:8px;padding:14px 18px;margin-bottom:18px;
box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:0 0 10px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 8px;border-bottom:1px solid #e5e7eb;font-size:14px}
th{color:#5b6475;font-weight:600}td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#e5e7eb;border-radius:4px;height:10px;min-width:120px;overflow:hidden}
.bar i{display:block;height:100%;background:#2f855a}
.bar i.warn{background:#d69e2e}.bar i.over{background:#c53030}.bar i.share{background:#3b6fb6}
.chart{display:flex;align-items:flex-end;gap:6px;height:140px;padding-top:6px}
.day{flex:1;display:flex;flex-direction:column;justify-content:flex-end;height:100%;
text-align:center;font-size:11px;color:#5b6475}
.day b{display:block;background:#3b6fb6;border-radius:3px 3px 0 0;min-height:1px}
.empty{color:#5b6475}nav a{color:#fff;margin-right:10px;font-size:13px}
nav a.on{font-weight:700;text-decoration:none}
"""


def _total(amounts: Iterable[Decimal]) -> Decimal:
    """Add amounts in budgetguard's own context, whatever the caller's."""
    total = Decimal(0)
    for amount in amounts:
        total = MONEY.add(total, amount)
    return total


def _count(value: Decimal) -> str:
    """Return a count of tokens, requests or calls with thousands separators (12,000)."""
    return f"{int(value):,}"


def _money(value: Decimal) -> str:
    """Return dollars with at least two and at most six decimals ($0.000123, $12.50)."""
    text = f"{value.quantize(Decimal('0.000001')):,.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M UTC")


def _bar(used: Decimal, kind: str | None = None) -> str:
    """Return a bar filled to ``used`` (a fraction); coloured by how close to the limit."""
    percent = min(Decimal(100), max(Decimal(0), used * 100))
    if kind is None:
        kind = "over" if used >= 1 else "warn" if used >= Decimal("0.8") else "ok"
    return (
        f'<div class="bar" title="{percent:.0f}% used">'
        f'<i class="{kind}" style="width:{percent:.1f}%"></i></div>'
    )


def _page(title: str, header: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><header>{header}</header><main>{body}</main></body></html>"
    )


def render_dashboard(report: Report, ledger: str, days: Sequence[tuple[date, Decimal]] = ()) -> str:
    """Render the spend dashboard of ``report`` (budgets, spend by user and model, holds).

    ``days`` is the spend of each recent day, oldest first, for the chart.
    """
    links = " ".join(
        f'<a href="/?period={name}"{" class=on" if name == report.period else ""}>{name}</a>'
        for name in ("current", "previous", "all")
    )
    header = (
        "<h1>budgetguard spend</h1>"
        f"<span>ledger {escape(ledger)} · {escape(_when(report.generated_at))}</span>"
        f"<nav>{links}</nav>"
    )
    per_user = sum(1 for row in report.budgets if row.user is not None)
    exhausted = sum(1 for row in report.budgets if row.used >= 1)
    window = (
        "all time" if report.since is None else f"{_when(report.since)} – {_when(report.until)}"
    )
    cards = (
        '<div class="cards">'
        f'<div class="card"><small>spent ({escape(report.period)})</small>'
        f'<b id="total">{_money(report.total)}</b><small>{escape(window)}</small></div>'
        f'<div class="card"><small>budgets</small><b id="budget-count">{len(report.budgets)}</b>'
        f"<small>{per_user} per user</small></div>"
        f'<div class="card"><small>at or over limit</small><b id="exhausted">{exhausted}</b>'
        "<small>calls refused until reset</small></div>"
        f'<div class="card"><small>calls in flight</small>'
        f'<b id="in-flight">{len(report.reservations)}</b>'
        f"<small>{_money(_total(r.held for r in report.reservations))} held</small>"
        "</div></div>"
    )
    return _page(
        "budgetguard spend",
        header,
        cards + _budgets_table(report) + _chart(days) + _breakdowns(report),
    )


def _chart(days: Sequence[tuple[date, Decimal]]) -> str:
    """Return spend over time as columns, one a day, each titled with its exact amount."""
    if not days:
        return ""
    largest = max(spent for _, spent in days) or Decimal(1)
    columns = "".join(
        f'<div class="day" data-day="{day.isoformat()}" title="{day.isoformat()}: '
        f'{_money(spent)}"><b style="height:{(spent / largest * 100):.1f}%"></b>'
        f"<span>{day.day}</span></div>"
        for day, spent in days
    )
    total = _total(spent for _, spent in days)
    return (
        f"<section><h2>Spend per day, last {len(days)} days "
        f'<small style="font-weight:400;color:#5b6475">{_money(total)}; '
        f"peak {_money(largest if total else Decimal(0))}</small></h2>"
        f'<div id="per-day" class="chart">{columns}</div></section>'
    )


def _budgets_table(report: Report) -> str:
    if not report.budgets:
        return '<section><h2>Budgets</h2><p class="empty">No budget is set.</p></section>'
    rows = []
    for row in report.budgets:
        # Dollars as money; tokens, requests and calls in flight as counts.
        show = _money if row.unit == "usd" else _count
        rows.append(
            f'<tr data-budget="{escape(row.budget)}" data-user="{escape(row.user or "")}">'
            f"<td>{escape(row.budget)}</td><td>{escape(row.user or '—')}</td>"
            f"<td>{escape(row.period)}</td>"
            f'<td class="n limit">{show(row.limit)}</td>'
            f'<td class="n spent">{show(row.spent)}</td>'
            f'<td class="n reserved">{show(row.reserved)}</td>'
            f'<td class="n remaining">{show(row.remaining)}</td>'
            f"<td>{_bar(row.used)}</td><td>{escape(_when(row.resets_at))}</td></tr>"
        )
    return (
        '<section><h2>Budgets</h2><table id="budgets"><thead><tr><th>budget</th><th>user</th>'
        '<th>period</th><th class="n">limit</th><th class="n">spent</th>'
        '<th class="n">held</th><th class="n">remaining</th><th>used</th><th>resets</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )


def _breakdowns(report: Report) -> str:
    users: dict[str, Decimal] = defaultdict(Decimal)
    models: dict[str, Decimal] = defaultdict(Decimal)
    for row in report.spend:
        users[row.user or "(no user)"] += row.spent
        models[row.model or "(no model)"] += row.spent
    return _top("Top users", "top-users", users) + _top("Top models", "top-models", models)


def _top(title: str, ident: str, spend: dict[str, Decimal], count: int = 10) -> str:
    if not spend:
        return f'<section><h2>{title}</h2><p class="empty">No spend recorded.</p></section>'
    ranked = sorted(spend.items(), key=lambda item: (-item[1], item[0]))[:count]
    largest = ranked[0][1] or Decimal(1)
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td class=n>{_money(spent)}</td>"
        f"<td>{_bar(spent / largest, 'share')}</td></tr>"
        for name, spent in ranked
    )
    return (
        f'<section><h2>{title}</h2><table id="{ident}"><thead><tr><th>name</th>'
        f'<th class="n">spent</th><th></th></tr></thead><tbody>{rows}</tbody></table></section>'
    )


def render_login(error: str | None) -> str:
    """Render the form that trades a token for a read-only dashboard session."""
    message = f'<p style="color:#c53030">{escape(error)}</p>' if error else ""
    body = (
        "<section><h2>Sign in</h2>"
        "<p>Paste a budgetguard token (read or admin). The browser keeps a read-only "
        "session cookie until the server restarts.</p>"
        f'{message}<form method="post" action="/login">'
        '<input type="password" name="token" autocomplete="current-password" '
        'style="width:360px;padding:6px" autofocus> '
        '<button type="submit">Open the dashboard</button></form></section>'
    )
    return _page("budgetguard: sign in", "<h1>budgetguard spend</h1>", body)
