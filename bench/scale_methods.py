"""Benchmark item 5. Scale: query cost and recall@1 of each search method as the stored set grows, in process
(the commands a user types at 50k, 200k and 1M stored: bench/scale.py)."""

from __future__ import annotations

import time

import numpy as np

from bench.common import (
    Config,
    Report,
    default_probes,
    empty_stage,
    exact_baseline,
    index_seconds,
    load_stage,
    run_split,
    warm,
)
from clipvdb import STAGES, SearchSettings, Store
from clipvdb.sources import Source


def item_scale(rep: Report, cfg: Config, store: Store, source: Source, data: dict, s1: dict) -> None:
    Xtr, ytr, ktr = data["train"]
    Xte = data["test"][0]
    rep.h("5. Scale: query cost and recall@1 as the stored set grows (stage first)")
    nq = min(200 if not cfg.quick else 50, len(Xte))
    Q = Xte[:nq]
    rng = np.random.default_rng(2)
    rows = []
    for size in cfg.scale_sizes:
        reps = -(-size // len(Xtr))
        noisy = [np.clip(Xtr + rng.normal(0, 0.01, Xtr.shape).astype(np.float32), 0, 1) for _ in range(reps - 1)]
        X = np.concatenate([Xtr, *noisy])[:size]
        keys = [f"{k}#{r}" for r in range(reps) for k in ktr][:size]
        labels = np.concatenate([ytr] * reps)[:size]
        split, dataset = f"scale{size}", source.name
        empty_stage(store, STAGES["first"])
        loaded = load_stage(store, STAGES["first"], source, split, keys, labels, X, index=("ivfflat", {}))
        ivf_s = index_seconds(loaded)
        nearest, base_s = exact_baseline(X, Q)
        id_of = np.array([loaded.ids[k] for k in keys])
        lists = loaded.index.params["lists"] if loaded.index else 0

        def go(label, settings, n=nq):
            ids_, _, secs = run_split(store, dataset, split, Q[:n], settings)
            recall = float((ids_ == id_of[nearest[:n]]).mean())
            rows.append([size, label, recall, 1000 * secs / n, (secs / n) / (base_s / nq)])

        warm(store, STAGES["first"], Q, SearchSettings(), dataset, split)
        go("exact", SearchSettings(exact=True), n=min(nq, 20 if size >= 50_000 else nq))
        probes = default_probes(store, STAGES["first"], dataset, split)
        go(f"ivfflat lists={lists} probes={probes} (build {ivf_s:.0f} s)", SearchSettings())
        variants = [("hnsw", {}), ("projected hnsw, project=128", {"project": 128})]
        for name, kw in variants if size <= 50_000 else variants[1:]:
            start = time.perf_counter()
            store.index(STAGES["first"], kind="hnsw", **kw)
            hs = time.perf_counter() - start
            warm(store, STAGES["first"], Q, SearchSettings(ef_search=100), dataset, split)
            go(f"{name} ef_search=100 (build {hs:.0f} s)", SearchSettings(ef_search=100))
    rep.p(
        f"{nq} queries per row (exact at 50k and above: 20), batches of 50, after an untimed warm-up. Sizes above "
        "50,000 repeat the training set with Gaussian noise (sigma 0.01); hnsw on the full vectors is built up to "
        "50,000 only (above that its build does not fit the benchmark's time budget). Build "
        "times include, for the projected index, the PCA fit and writing the projections. Baseline: in-process "
        "exact search over the same array, per query."
    )
    rep.table(["stored", "method", "recall@1", "ms/query", "time / in-process exact"], rows)
