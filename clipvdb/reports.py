"""Report views (SQL in sql/, installed by migrations) read back as rows, and the web pages' reads
built on them: every run, one run whole, what is stored."""

from __future__ import annotations

import psycopg
from psycopg.adapt import Loader
from psycopg.rows import dict_row

from . import catalog, db, indexes, queries
from .stages import STAGES

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


def rows(conn: psycopg.Connection, statement, params=()) -> list[dict]:
    """Rows of one statement of the query layer as dicts; the transaction is closed after."""
    with conn.cursor(row_factory=dict_row) as cur:
        out = cur.execute(statement, params).fetchall()
    conn.rollback()
    return out


def runs(conn: psycopg.Connection) -> list[dict]:
    """Every run (report_runs), newest first, each with "accuracy": {stage: accuracy_pct} from
    report_accuracy (complete runs only: a running or failed run has none)."""
    found = rows(conn, queries.WEB_RUNS)
    per_run: dict[int, dict[str, float]] = {}
    for a in rows(conn, queries.WEB_ACCURACY):
        per_run.setdefault(a["run_id"], {})[a["stage"]] = a["accuracy_pct"]
    for r in found:
        r["accuracy"] = per_run.get(r["run_id"], {})
    return found


def run(conn: psycopg.Connection, run_id: int, limit: int = 10) -> dict | None:
    """Everything about one run: its report_runs row ("run"), every report view's rows for it, its
    `limit` slowest query batches ("slowest_batches") and per stage its `limit` most confident wrong
    answers ("confident_wrong"); None when there is no such run."""
    out = report(conn, run_id, VIEWS)
    if not out["report_runs"]:
        return None
    params = {"run": run_id, "limit": limit}
    out["slowest_batches"] = rows(conn, queries.WEB_SLOWEST_BATCHES, params)
    out["confident_wrong"] = rows(conn, queries.WEB_CONFIDENT_WRONG, params)
    out["run"] = out["report_runs"][0]
    return out


def data_overview(conn: psycopg.Connection) -> dict:
    """What is stored: "datasets" (dataset, split, classes, images), "stage_rows" (rows per stage,
    model, dataset and split) and "stages" (per stored stage: rows, table bytes with TOAST and
    indexes, bytes per row, its IndexInfo)."""
    datasets = rows(conn, queries.WEB_DATASETS)
    stage_rows = rows(conn, queries.WEB_STAGE_ROWS)
    stages = []
    for name in catalog.stages_with_rows(conn):
        stage = STAGES[name]
        info = indexes.info(conn, stage)
        size = db.scalar(conn, queries.TOTAL_RELATION_SIZE, (stage.table,)) or 0
        stages.append(
            {
                "stage": name,
                "table": stage.table,
                "rows": info.rows,
                "bytes": int(size),
                "bytes_per_row": size / info.rows if info.rows else None,
                "index": info,
            }
        )
    conn.rollback()
    return {"datasets": datasets, "stage_rows": stage_rows, "stages": stages}
