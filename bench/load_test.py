"""Benchmark item 6. Load: concurrent clients."""

from __future__ import annotations

import threading
import time

import numpy as np

from bench.common import Config, Report, ensure_first_loaded
from clipvdb import STAGES, SearchSettings, Store
from clipvdb.sources import Source


def item_load_test(rep: Report, cfg: Config, store: Store, source: Source, data: dict) -> dict:
    """Bounded load: N concurrent clients classify single images at stage first for a fixed time."""
    Xte = data["test"][0]
    clients, seconds = (8, 60.0) if not cfg.quick else (2, 3.0)
    rep.h(f"6. Load: {clients} concurrent clients classifying for {seconds:.0f} s (stage first, default index)")
    ensure_first_loaded(store, source, data)
    idx = store.index_info(STAGES["first"])
    dataset = source.name
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        rng = np.random.default_rng(i)
        try:
            searcher = store.searcher(STAGES["first"], SearchSettings(), dataset=dataset)
            with store.connection() as conn:
                while time.perf_counter() < stop_at:
                    q = Xte[rng.integers(len(Xte)) : None][:1]
                    t0 = time.perf_counter()
                    neigh, _ = searcher.search(conn, q)
                    latencies[i].append((time.perf_counter() - t0) * 1000)
                    if len(neigh[0]) != 1:
                        errors.append("no neighbor returned")
        except Exception as exc:  # counted, not raised: the load test reports errors
            errors.append(f"{exc.__class__.__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    lat = np.array([x for part in latencies for x in part])
    rep.p(
        f"Python clients, one connection each, over the embedded server's unix socket; index {idx.kind} "
        f"{idx.params}; {idx.rows:,} stored vectors. Bounded: {seconds:.0f} s, then every client stops."
    )
    p50 = p95 = top = 0.0
    if len(lat):
        p50, p95, top = float(np.percentile(lat, 50)), float(np.percentile(lat, 95)), float(lat.max())
    rep.table(
        ["clients", "queries", "queries/s", "p50 ms", "p95 ms", "max ms", "errors"],
        [[clients, len(lat), len(lat) / seconds, p50, p95, top, len(errors)]],
    )
    for e in errors[:5]:
        rep.p(f"error: {e}")
    return {"queries": len(lat), "errors": len(errors)}
