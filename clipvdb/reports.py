"""Report views (SQL in sql/, installed by migrations) read back as rows."""

from __future__ import annotations

import psycopg
from psycopg.adapt import Loader
from psycopg.rows import dict_row

from . import queries

VIEWS: tuple[str, ...] = tuple(queries.REPORT_ORDER)


class _FloatNumericLoader(Loader):
    """numeric as float: report rows go to JSON and pandas, where Decimal is a nuisance."""

    def load(self, data) -> float:
        return float(bytes(data).decode())


def latest_run(conn: psycopg.Connection) -> int | None:
    row = conn.execute(queries.LATEST_RUN).fetchone()
    return row[0] if row else None


def fetch(conn: psycopg.Connection, view: str, run: int | None) -> list[dict]:
    if view not in VIEWS:
        raise ValueError(view)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.adapters.register_loader("numeric", _FloatNumericLoader)
        cur.execute(queries.report_view(view, run is not None), (run,) if run is not None else ())
        return cur.fetchall()


def report(conn: psycopg.Connection, run: int | None = None, views: tuple[str, ...] = VIEWS) -> dict:
    """{"run_id": run, view: rows} for one run (default: the latest complete run)."""
    run = run if run is not None else latest_run(conn)
    out: dict = {"run_id": run}
    for v in views:
        out[v] = fetch(conn, v, run) if run is not None else []
    conn.rollback()
    return out
