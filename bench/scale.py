"""Benchmark item 5. Scale."""

from __future__ import annotations

import time

import numpy as np

from bench.common import Config, Report, exact_baseline, load_stage, run_split, warm
from clipvdb import Store, catalog, indexes
from clipvdb.knn import SearchSettings
from clipvdb.sources import Source
from clipvdb.stages import STAGES


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
        X = np.concatenate([Xtr] + [np.clip(Xtr + rng.normal(0, 0.01, Xtr.shape).astype(np.float32), 0, 1)
                                    for _ in range(reps - 1)])[:size]  # fmt: skip
        keys = [f"{k}#{r}" for r in range(reps) for k in ktr][:size]
        labels = np.concatenate([ytr] * reps)[:size]
        with store.connection() as conn:
            conn.execute("TRUNCATE embeddings_first CASCADE")
            conn.commit()
        ids, load_s, ivf_s = load_stage(store, STAGES["first"], source, f"scale{size}", keys, labels, X,
                                        index=("ivfflat", {}))  # fmt: skip
        nearest, base_s = exact_baseline(X, Q)
        id_of = np.array([ids[k] for k in keys])
        with store.connection() as conn:
            dataset = catalog.dataset_id(conn, source.name)
            lists = indexes.info(conn, STAGES["first"]).params["lists"]

        def go(label, settings, n=nq):
            searcher_split = f"scale{size}"
            ids_, _, secs = run_split(store, dataset, searcher_split, Q[:n], settings)
            recall = float((ids_ == id_of[nearest[:n]]).mean())
            rows.append([size, label, recall, 1000 * secs / n, (secs / n) / (base_s / nq)])

        warm(store, STAGES["first"], Q, SearchSettings(), dataset, f"scale{size}")
        go("exact", SearchSettings(exact=True), n=min(nq, 20 if size >= 50_000 else nq))
        go(f"ivfflat lists={lists} probes={indexes.default_probes(lists)} (build {ivf_s:.0f} s)", SearchSettings())
        variants = [("hnsw", {}), ("projected hnsw, project=128", {"project": 128})]
        for name, kw in variants if size <= 50_000 else variants[1:]:
            start = time.perf_counter()
            store.index(STAGES["first"], "hnsw", **kw)
            hs = time.perf_counter() - start
            warm(store, STAGES["first"], Q, SearchSettings(ef_search=100), dataset, f"scale{size}")
            go(f"{name} ef_search=100 (build {hs:.0f} s)", SearchSettings(ef_search=100))
    rep.p(f"{nq} queries per row (exact at 50k and above: 20), batches of 50, after an untimed warm-up. Sizes above "
          "50,000 repeat the training set with Gaussian noise (sigma 0.01); hnsw on the full vectors is built up to "
          "50,000 only (its build time above that does not fit this run's 45-minute budget on 2 cores). Build "
          "times include, for the projected index, the PCA fit and writing the projections. Baseline: in-process "
          "exact search over the same array, per query.")  # fmt: skip
    rep.table(["stored", "method", "recall@1", "ms/query", "time / in-process exact"], rows)
