"""Benchmark item 8. vector versus halfvec storage."""

from __future__ import annotations

import time

import numpy as np
from psycopg import sql as psql

from bench.common import Config, Report, ensure_first_loaded, exact_baseline
from clipvdb import Store, db
from clipvdb.ingest import copy_rows
from clipvdb.sources import Source


def item_storage(rep: Report, cfg: Config, store: Store, source: Source, data: dict) -> None:
    """Stage first stored as vector(3072) (TOASTed; before migration 0004) against halfvec(3072) in
    line (now): COPY speed, exact-scan time, recall, size."""
    Xtr, _, ktr = data["train"]
    Xte = data["test"][0]
    nq = min(100 if not cfg.quick else 20, len(Xte))
    rep.h(f"8. Storage: vector(3072) against halfvec(3072) for stage first, {len(Xtr):,} rows")
    nearest, base_s = exact_baseline(Xtr, Xte[:nq])
    ensure_first_loaded(store, source, data)
    rows = []
    with store.connection() as conn:
        id_of = dict(conn.execute("SELECT i.source, i.id FROM images i WHERE i.split = 'train'").fetchall())
        ids = [id_of[k] for k in ktr]
        truth = np.array([ids[j] for j in nearest])
        for column, storage in (("vector(3072)", "EXTERNAL"), ("halfvec(3072)", "PLAIN")):
            kind = column.split("(")[0]
            table = f"storage_{kind}"
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f"CREATE TABLE {table} (image_id bigint PRIMARY KEY, embedding {column} NOT NULL)")
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN embedding SET STORAGE {storage}")
            conn.commit()
            start = time.perf_counter()
            for s in range(0, len(Xtr), 5000):
                copy_rows(conn, psql.SQL("COPY {} (image_id, embedding) FROM STDIN WITH (FORMAT BINARY)").format(
                              psql.Identifier(table)), ["int8", kind],
                      ((ids[i], db.as_param(Xtr[i], kind)) for i in range(s, min(len(Xtr), s + 5000))))  # fmt: skip
                conn.commit()
            load_s = time.perf_counter() - start
            conn.execute(f"SELECT sum(vector_dims(embedding)) FROM {table}").fetchone()  # warm
            sql = f"SELECT image_id FROM {table} ORDER BY l2_distance(embedding, %s::vector::{column}) LIMIT 1"
            got, start = [], time.perf_counter()
            for q in Xte[:nq]:
                got.append(conn.execute(sql, (q,)).fetchone()[0])
            secs = time.perf_counter() - start
            conn.commit()
            size = conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]
            rows.append([f"{column}, storage {storage.lower()}", len(Xtr) / load_s, nq,
                         float((np.array(got) == truth).mean()), 1000 * secs / nq, (secs / nq) / (base_s / nq),
                         f"{size / 2**20:,.0f}"])  # fmt: skip
            conn.execute(f"DROP TABLE {table}")
            conn.commit()
    rows[1].append(f"load {rows[1][1] / rows[0][1]:.2f} x, scan {rows[1][4] / rows[0][4]:.2f} x")
    rows[0].append("baseline")
    rep.p(f"Both tables loaded in this run by COPY binary, 5,000 rows per transaction; then exact scans (function "
          f"form, no index), {nq} queries, after an untimed warm-up; recall@1 against in-process float32 exact "
          f"search (baseline {1000 * base_s / nq:.2f} ms/query). halfvec in line is what migration 0004 made of "
          "stages first and third.")  # fmt: skip
    rep.table(["storage", "COPY vectors/s", "queries", "recall@1", "ms/query", "time / in-process exact",
               "table MiB", "halfvec / vector"], rows)  # fmt: skip
