"""Benchmark item 2. Bulk load."""

from __future__ import annotations

import numpy as np

from bench.common import Config, Report, empty_stage, index_seconds, load_stage
from clipvdb import STAGES, Store
from clipvdb.sources import Source


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
        empty_stage(store, stage)
        loaded = load_stage(store, stage, source, "train", ktr[:n], ytr[:n], X)
        load_s, index_s = loaded.load_seconds, index_seconds(loaded)
        index = loaded.index
        label = "none" if index is None else index.kind
        if index is not None and index.params.get("project"):
            label += f" project={index.params['project']}"
        rows.append([name, stage.sql_type, n, load_s, n / load_s, label, index_s, n / (load_s + index_s)])
    rep.p(
        "Vectors only (image rows exist); 5,000 vectors per transaction; first uses the real pixels, the "
        "others random projections of them (load cost depends on size, not values). Index: the stage's default "
        "(for first: PCA fit, projections written, then the index built over the projections)."
    )
    header = [
        "stage",
        "column",
        "vectors",
        "load s",
        "vectors/s",
        "default index",
        "index build s",
        "vectors/s incl. index",
    ]
    rep.table(header, rows)
    for name in ("second", "third", "origin"):
        empty_stage(store, STAGES[name])
