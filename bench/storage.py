"""Benchmark item 8. vector versus halfvec storage."""

from __future__ import annotations

import time

import numpy as np

from bench import statements
from bench.common import Config, Report, ensure_first_loaded, exact_baseline
from clipvdb import STAGES, Store, db, queries
from clipvdb.sources import Source


def item_storage(rep: Report, cfg: Config, store: Store, source: Source, data: dict) -> None:
    """Stage first's vectors in two scratch tables: vector(3072), too wide to stay in line and so
    moved to TOAST, against halfvec(3072) stored in line, as stages first and third are. COPY speed,
    exact-scan time, recall, size."""
    Xtr, _, ktr = data["train"]
    Xte = data["test"][0]
    dim = STAGES["first"].dim
    nq = min(100 if not cfg.quick else 20, len(Xte))
    rep.h(f"8. Storage: vector({dim}) against halfvec({dim}) for stage first, {len(Xtr):,} rows")
    nearest, base_s = exact_baseline(Xtr, Xte[:nq])
    id_of = ensure_first_loaded(store, source, data)
    ids = [id_of[k] for k in ktr]
    truth = np.array([ids[j] for j in nearest])
    rows = []
    with store.connection() as conn:
        for kind, storage in (("vector", "EXTERNAL"), ("halfvec", "PLAIN")):
            table = f"storage_{kind}"
            conn.execute(queries.drop_table(table))
            conn.execute(statements.scratch_vectors_table(table, kind, dim))
            conn.execute(statements.column_storage(table, "embedding", storage))
            conn.commit()
            start = time.perf_counter()
            for s in range(0, len(Xtr), 5000):
                part = range(s, min(len(Xtr), s + 5000))
                vectors = ((ids[i], db.as_param(Xtr[i], kind)) for i in part)
                db.copy_rows(conn, statements.copy_scratch_vectors(table), ["int8", kind], vectors)
                conn.commit()
            load_s = time.perf_counter() - start
            conn.execute(statements.touch_vectors(table)).fetchone()  # warm
            nearest_sql = statements.scratch_nearest(table, kind, dim)
            got, start = [], time.perf_counter()
            for q in Xte[:nq]:
                got.append(conn.execute(nearest_sql, (q,)).fetchone()[0])
            secs = time.perf_counter() - start
            conn.commit()
            size = conn.execute(queries.TOTAL_RELATION_SIZE, (table,)).fetchone()[0]
            rows.append(
                [
                    f"{kind}({dim}), storage {storage.lower()}",
                    len(Xtr) / load_s,
                    nq,
                    float((np.array(got) == truth).mean()),
                    1000 * secs / nq,
                    (secs / nq) / (base_s / nq),
                    f"{size / 2**20:,.0f}",
                ]
            )
            conn.execute(queries.drop_table(table))
            conn.commit()
    rows[1].append(f"load {rows[1][1] / rows[0][1]:.2f} x, scan {rows[1][4] / rows[0][4]:.2f} x")
    rows[0].append("baseline")
    rep.p(
        "Both tables loaded in this run by COPY binary, 5,000 rows per transaction; then exact scans (function "
        f"form, no index), {nq} queries, after an untimed warm-up; recall@1 against in-process float32 exact "
        f"search (baseline {1000 * base_s / nq:.2f} ms/query). halfvec in line is how stages first and third are "
        "stored."
    )
    header = [
        "storage",
        "COPY vectors/s",
        "queries",
        "recall@1",
        "ms/query",
        "time / in-process exact",
        "table MiB",
        "halfvec / vector",
    ]
    rep.table(header, rows)
