"""The report's HTML pages and tables: plain self-contained HTML, so the report opens offline.

Every table nadir writes (leaderboard, protocol scores, cost, comparison, dataset summary) is
made by `table` and every page by `page`: text is escaped in one place.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TABLE_CSS = ("body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:1.5em}"
             "td,th{border:1px solid #999;padding:3px 8px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}")


@dataclass(frozen=True)
class Span:
    """A cell spanning `columns` columns (a row that says why it has no numbers)."""

    text: str
    columns: int


def _cell(value) -> str:
    if isinstance(value, Span):
        return f"<td colspan='{value.columns}'>{html.escape(value.text)}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """A table: one heading per column, then one row per sequence of cells (any value, as its
    text; a `Span` across columns)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def heading(level: int, text: str) -> str:
    return f"<h{level}>{html.escape(text)}</h{level}>"


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def page(title: str, *parts: str) -> str:
    """A whole document: its title, the tables' style, then `parts` (HTML) in order."""
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(title)}</title><style>{TABLE_CSS}</style></head><body>"
            + "".join(parts) + "</body></html>\n")
