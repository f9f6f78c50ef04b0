"""Benchmark item 2. Bulk load."""

from __future__ import annotations

import numpy as np

from bench.common import Config, FakeEncoder, Report, load_stage
from clipvdb import Store, indexes
from clipvdb.sources import Source
from clipvdb.stages import STAGES


def item_load(rep: Report, cfg: Config, store: Store, source: Source, data: dict) -> None:
    Xtr, ytr, ktr = data["train"]
    n = min(len(Xtr), 20_000 if not cfg.quick else len(Xtr))
    rep.h(f"2. Bulk load: COPY binary, {n:,} vectors per stage table")
    rng = np.random.default_rng(0)
    rows = []
    for name in ("first", "second", "third", "origin"):
        stage = STAGES[name]
        if stage.dim == 3072:
            X = Xtr[:n]
        else:
            X = (Xtr[:n] @ rng.standard_normal((3072, stage.dim), dtype=np.float32) / 55).astype(np.float32)
        with store.connection() as conn:
            conn.execute(f"TRUNCATE {stage.table} CASCADE")
            conn.commit()
        _, load_s, index_s = load_stage(
            store, stage, source, "train", ktr[:n], ytr[:n], X, FakeEncoder() if stage.uses_clip else None
        )
        kind, params = indexes.default_index(stage)
        label = kind + (f" project={params['project']}" if params.get("project") else "")
        rows.append([name, stage.sql_type, n, load_s, n / load_s, label, index_s, n / (load_s + index_s)])
    rep.p("Vectors only (image rows exist); 5,000 vectors per transaction; first uses the real pixels, the "
          "others random projections of them (load cost depends on size, not values). Index: the stage's default "
          "(for first: PCA fit, projections written, hnsw built).")  # fmt: skip
    rep.table(["stage", "column", "vectors", "load s", "vectors/s", "default index", "index build s",
               "vectors/s incl. index"], rows)  # fmt: skip
    with store.connection() as conn:
        for name in ("second", "third", "origin"):
            conn.execute(f"TRUNCATE {STAGES[name].table} CASCADE")
        conn.commit()
