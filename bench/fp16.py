"""Benchmark item 9. Half precision and the nearest neighbor."""

from __future__ import annotations

import time

from bench.common import FP16_HEADER, Config, Report, fp16_nearest_changes
from clipvdb import Store
from clipvdb.sources import Source


def item_fp16(rep: Report, cfg: Config, source: Source) -> None:
    n_train, n_test = (40, 10) if cfg.quick else (1000, 100)
    rep.h(f"9. Half precision and the nearest neighbor at the CLIP stages ({n_train:,} stored, {n_test:,} queries)")
    store = Store(model="RN50", pretrained="random", device="cpu")  # the encoder only: no database
    start = time.perf_counter()
    rows = fp16_nearest_changes(store, source, n_train, n_test)
    rep.p(
        "RN50 with RANDOM weights (seed 0), exact 1-NN in numpy, float32 against both sides rounded to float16 "
        f"as halfvec stores them; {time.perf_counter() - start:.0f} s. Every stage is stored as halfvec. "
        "Stage first: item 8. With real weights, item 7 reports the same table."
    )
    rep.table(FP16_HEADER, rows)
