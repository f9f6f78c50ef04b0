"""Benchmark item 4. The study's table."""

from __future__ import annotations

import os

import numpy as np

from bench.common import (
    BUDGET_S,
    STUDY,
    Config,
    Report,
    empty_stage,
    ensure_first_loaded,
    load_stage,
    run_queries,
    touch,
)
from clipvdb import STAGES, SearchSettings, Store
from clipvdb.sources import Source


def item_study(rep: Report, cfg: Config, store: Store, source: Source, data: dict, s1: dict, ips: dict) -> None:
    Xtr, ytr, ktr = data["train"]
    Xte = data["test"][0]
    n = min(1000, len(Xte))
    rep.h(f"4. The study's table: {n:,} test images per stage")
    rng = np.random.default_rng(1)
    rows = []
    ensure_first_loaded(store, source, data)
    for name in ("origin", "first", "second", "third"):
        stage = STAGES[name]
        enc_s = None if name == "first" else n / ips[name]  # stage first runs no encoder
        if name == "origin":
            q_s = None  # zero-shot: one matrix product against 10 prompts, not a database query
        else:
            if name == "first":
                Q = Xte[:n]
            else:
                P = rng.standard_normal((3072, stage.dim), dtype=np.float32) / 55
                empty_stage(store, stage)
                load_stage(store, stage, source, "train", ktr, ytr, (Xtr @ P).astype(np.float32))
                Q = (Xte[:n] @ P).astype(np.float32)
                touch(store, stage)
            kind = store.index_info(stage).kind
            settings = SearchSettings(ef_search=100) if kind == "hnsw" else SearchSettings()
            _, _, q_s, done = run_queries(
                store, stage, s1["dataset"], Q, settings, batch=100, clients=2, budget_s=BUDGET_S
            )
            q_s = q_s * len(Q) / max(len(done), 1)
        se, sq = STUDY[name]
        total = (enc_s or 0.0) + (q_s or 0.0)
        rows.append(
            [
                name,
                "none" if enc_s is None else enc_s,
                "not a query" if q_s is None else q_s,
                f"{se:.0f} + {sq:.0f}",
                total / (se + sq),
            ]
        )
    rep.p(
        f"Encoder seconds from item 3's images/s at batch 32 (CPU, {os.cpu_count()} cores); query seconds measured "
        f"here for {n:,} queries against {len(Xtr):,} stored vectors (batches of 100, 2 connections). Stages second "
        "and third store random projections of the pixels (the benchmark runs without real weights): query cost "
        "depends on size and index, not on which model made the vectors. The study: a laptop and a hosted vector "
        "database."
    )
    rep.table(["stage", "encoder s", "query s", "study s (encoder + query)", "our total / study total"], rows)
