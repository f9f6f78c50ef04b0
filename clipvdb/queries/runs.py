"""Evaluation runs: their rows, locks and stored predictions."""

from __future__ import annotations

from psycopg import sql

INSERT_RUN = """INSERT INTO eval_runs (dataset_id, split, stages, model, weights, k, params)
    VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id"""
COMPLETE_RUN = """UPDATE eval_runs SET status = 'complete', finished_at = now(), params = params || %s::jsonb
    WHERE id = %s"""
FAIL_RUN = "UPDATE eval_runs SET status = 'failed', finished_at = now() WHERE id = %s"
COPY_RUN_NEIGHBORS = """COPY run_neighbors (run_id, model_no, stage, image_id, rank, neighbor_id, label, distance,
    similarity)
    FROM STDIN WITH (FORMAT BINARY)"""
LATEST_RUN = "SELECT max(id) FROM eval_runs WHERE status = 'complete'"
# A running run's session holds a session-level advisory lock (RUN_LOCK_KEY, run id), taken before
# the run's row commits; a 'running' run whose lock nobody holds was cut short (its process killed).
RUN_LOCK_KEY = 1668051574  # 'clrv'
LOCK_RUN = "SELECT pg_advisory_lock(%s, %s)"
UNLOCK_RUN = "SELECT pg_advisory_unlock(%s, %s)"
RUNNING_RUNS = "SELECT id FROM eval_runs WHERE status = 'running'"
HELD_RUN_LOCKS = """SELECT objid::int8 FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid = %s::int8::oid
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""
FAIL_RUNS = "UPDATE eval_runs SET status = 'failed', finished_at = now() WHERE id = ANY(%s) AND status = 'running'"


def copy_predictions(columns: tuple[str, ...]) -> sql.Composed:
    return sql.SQL("COPY predictions ({}) FROM STDIN WITH (FORMAT BINARY)").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
