"""Report views (SQL in sql/, installed by migrations) read back as rows."""

from __future__ import annotations

from decimal import Decimal

import psycopg
from psycopg.rows import dict_row

from . import db

VIEWS = (
    "report_runs",
    "report_accuracy",
    "report_timing",
    "report_confusion",
    "report_class_accuracy",
    "report_distance_histogram",
)

STAGE_ORDER = "array_position(ARRAY['first','second','third','origin'], stage)"
_ORDER = {
    "report_runs": "run_id",
    "report_accuracy": f"run_id, {STAGE_ORDER}",
    "report_timing": f"run_id, {STAGE_ORDER}",
    "report_confusion": f"run_id, {STAGE_ORDER}, true_label, predicted_label",
    "report_class_accuracy": f"run_id, {STAGE_ORDER}, label",
    "report_distance_histogram": f"run_id, {STAGE_ORDER}, bin",
}


def _plain(value):
    if isinstance(value, Decimal):
        return float(value)
    return value


def latest_run(conn: psycopg.Connection) -> int | None:
    row = conn.execute("SELECT max(id) FROM eval_runs WHERE status = 'complete'").fetchone()
    return row[0]


def fetch(conn: psycopg.Connection, view: str, run: int | None) -> list[dict]:
    if view not in VIEWS:
        raise ValueError(view)
    where = "WHERE run_id = %s" if run is not None else ""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT * FROM {view} {where} ORDER BY {_ORDER[view]}", (run,) if run is not None else ()
        ).fetchall()
    return [{k: _plain(v) for k, v in r.items()} for r in rows]


def report(url: str, run: int | None = None, views: tuple[str, ...] = VIEWS) -> dict:
    """{view: rows} for one run (default: the latest complete run)."""
    with db.open_db(url) as conn:
        run = run if run is not None else latest_run(conn)
        out = {"run_id": run}
        for v in views:
            out[v] = fetch(conn, v, run) if run is not None else []
        return out
