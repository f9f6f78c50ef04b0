"""Benchmark item 7. Accuracy per stage with given weights."""

from __future__ import annotations

import time

from bench.common import FP16_HEADER, STUDY_ACCURACY, Config, Report, fp16_nearest_changes
from clipvdb import Store
from clipvdb.sources import Source


def item_accuracy(
    rep: Report,
    cfg: Config,
    store: Store,
    source: Source,
    pretrained: str,
    model: str,
    n_train: int,
    n_test: int,
) -> None:
    """The study's accuracy table with real weights: ingest every stage, evaluate, compare."""
    with Store(store.url, model=model, pretrained=pretrained) as weighted:
        encoder = weighted.encoder
        sizes = f"{n_train:,} stored, {n_test:,} queries"
        rep.h(f"7. Accuracy per stage with {model} weights '{encoder.weights}': {sizes}")
        start = time.perf_counter()
        weighted.ingest(source, "all", split="train", limit=n_train, dataset="accuracy")
        ingest_s = time.perf_counter() - start
        result = weighted.evaluate(source, "all", split="test", limit=n_test, dataset="accuracy")
        real = not encoder.is_random
        rep.p(
            f"Device {encoder.device}; ingest {ingest_s:.0f} s; evaluate run {result.run_id}; "
            "default index settings. "
            + ("Measured WITH REAL WEIGHTS." if real else "RANDOM weights: these accuracies say nothing about CLIP.")
        )
        rows = [
            [
                name,
                t.n,
                t.accuracy,
                STUDY_ACCURACY[name],
                t.accuracy - STUDY_ACCURACY[name],
                t.encode_ms / 1000,
                t.query_ms / 1000,
            ]
            for name, t in result.stages.items()
        ]
        rep.table(["stage", "queries", "accuracy %", "study %", "difference", "encoder s", "query s"], rows)
        n_fp = (min(n_train, 1000), min(n_test, 100))
        rep.p(f"Half precision and the nearest neighbor with these weights ({n_fp[0]:,} stored, {n_fp[1]:,} queries):")
        rep.table(FP16_HEADER, fp16_nearest_changes(weighted, source, *n_fp))
