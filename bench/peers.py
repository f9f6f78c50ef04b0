"""Peers on the same stage-first job: faiss in-process (exact, HNSW, and PCA + HNSW + exact re-rank,
the algorithm clipvdb's projected index runs) and two embedded databases a user might pick instead,
sqlite-vec (SQL, embedded) and LanceDB. Each is timed in this process against the same in-process
exact baseline, on the same arrays: load (with index build), all queries, accuracy.

    python -m bench.peers --data .cache/data/cifar10 [--queries N]

Needs the `bench` extra (pip install -e '.[bench]'). A peer whose exhaustive search would take
too long answers a subset of the queries; its row says how many, and its time is extrapolated to
all of them and labelled as such.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import markdown
from bench.common import exact_baseline, load_pixels
from clipvdb.sources import open_source

K_CANDIDATES = 20


def _acc(nearest: np.ndarray, ytr: np.ndarray, yte: np.ndarray) -> float:
    return float((ytr[nearest] == yte[: len(nearest)]).mean() * 100)


def _row(peer: str, load_s: float, query_s: float, queries: int, accuracy: float) -> dict:
    return {"peer": peer, "load_s": load_s, "query_s": query_s, "queries": queries, "accuracy": accuracy}


def faiss_rows(Xtr, ytr, Xte, yte) -> list[dict]:
    import faiss

    rows = []
    start = time.perf_counter()
    flat = faiss.IndexFlatL2(Xtr.shape[1])
    flat.add(Xtr)
    load = time.perf_counter() - start
    start = time.perf_counter()
    _, nn = flat.search(Xte, 1)
    rows.append(
        _row("faiss IndexFlatL2 (exact)", load, time.perf_counter() - start, len(Xte), _acc(nn[:, 0], ytr, yte))
    )
    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(Xtr.shape[1], 16)
    hnsw.hnsw.efConstruction = 64
    hnsw.add(Xtr)
    load = time.perf_counter() - start
    hnsw.hnsw.efSearch = 100
    start = time.perf_counter()
    _, nn = hnsw.search(Xte, 1)
    rows.append(
        _row("faiss HNSW m 16, ef 100 (3,072-d)", load, time.perf_counter() - start, len(Xte), _acc(nn[:, 0], ytr, yte))
    )
    start = time.perf_counter()
    pca = faiss.PCAMatrix(Xtr.shape[1], 128)
    pca.train(Xtr[:20000])
    P = pca.apply(Xtr)
    ph = faiss.IndexHNSWFlat(128, 16)
    ph.hnsw.efConstruction = 64
    ph.add(P)
    load = time.perf_counter() - start
    ph.hnsw.efSearch = 100
    start = time.perf_counter()
    _, cand = ph.search(pca.apply(Xte), K_CANDIDATES)
    nn = np.empty(len(Xte), dtype=np.int64)
    sq = (Xtr * Xtr).sum(1)
    for s in range(0, len(Xte), 500):  # exact re-rank: |c|^2 - 2 c.q per candidate, in chunks
        c, q = cand[s : s + 500], Xte[s : s + 500]
        d = sq[c] - 2 * np.einsum("qkd,qd->qk", Xtr[c], q)
        nn[s : s + 500] = c[np.arange(len(c)), d.argmin(1)]
    rows.append(
        _row(
            "faiss PCA 128 + HNSW + exact re-rank of 20 (the floor)",
            load,
            time.perf_counter() - start,
            len(Xte),
            _acc(nn, ytr, yte),
        )
    )
    return rows


def sqlite_vec_row(Xtr, ytr, Xte, yte, n_queries: int) -> dict:
    """sqlite-vec's vec0 table (exhaustive KNN; it has no ANN index), through apsw: a Python built
    without loadable-extension support cannot load SQLite extensions with the standard library."""
    import apsw
    import sqlite_vec

    with tempfile.TemporaryDirectory() as tmp:
        con = apsw.Connection(str(Path(tmp) / "vec.db"))
        con.enable_load_extension(True)
        con.load_extension(sqlite_vec.loadable_path())
        start = time.perf_counter()
        con.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{Xtr.shape[1]}])")
        with con:
            rows = ((i, Xtr[i].tobytes()) for i in range(len(Xtr)))
            con.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)", rows)
        load = time.perf_counter() - start
        start = time.perf_counter()
        nearest = "SELECT rowid FROM v WHERE embedding MATCH ? ORDER BY distance LIMIT 1"
        nn = [next(con.execute(nearest, (Xte[i].tobytes(),)))[0] for i in range(n_queries)]
        secs = time.perf_counter() - start
    return _row("sqlite-vec vec0 (exhaustive; SQL, embedded)", load, secs, n_queries, _acc(np.array(nn), ytr, yte))


def lancedb_row(Xtr, ytr, Xte, yte, n_queries: int) -> dict:
    """LanceDB, embedded: an IVF-PQ index (its ANN index) with a refine step over the full vectors."""
    import lancedb
    import pyarrow as pa

    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(tmp)
        start = time.perf_counter()
        vec = pa.FixedSizeListArray.from_arrays(pa.array(Xtr.reshape(-1)), Xtr.shape[1])
        table = db.create_table("v", pa.table({"id": pa.array(np.arange(len(Xtr))), "vector": vec}))
        table.create_index(metric="l2", num_partitions=224, num_sub_vectors=96, vector_column_name="vector")
        load = time.perf_counter() - start
        start = time.perf_counter()
        nn = []
        for i in range(n_queries):
            hit = table.search(Xte[i]).nprobes(20).refine_factor(K_CANDIDATES).limit(1).to_list()
            nn.append(hit[0]["id"])
        secs = time.perf_counter() - start
    return _row(
        "LanceDB IVF-PQ (224 partitions, 20 probes, refine 20; embedded)",
        load,
        secs,
        n_queries,
        _acc(np.array(nn), ytr, yte),
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--queries", type=int, default=500, help="queries for the slow peers (default 500)")
    ap.add_argument("--faiss-only", action="store_true", help="only the in-process faiss rows")
    ap.add_argument("--out", type=Path, default=Path("bench-out/peers.json"))
    ap.add_argument(
        "--headline",
        type=Path,
        default=Path("bench-out/headline.json"),
        help="the headline run's JSON, for the clipvdb CLI row (make bench runs the headline first)",
    )
    ap.add_argument("--write", action="store_true", help="rewrite the peers block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    source = open_source(args.data)
    Xtr, ytr, _ = load_pixels(source, "train", len(source.items("train")))
    Xte, yte, _ = load_pixels(source, "test", len(source.items("test")))
    nearest, base_s = exact_baseline(Xtr, Xte)
    out: dict = {
        "baseline_s": base_s,
        "baseline_accuracy": _acc(nearest, ytr, yte),
        "queries_all": len(Xte),
        "rows": [],
    }
    out["rows"] += faiss_rows(Xtr, ytr, Xte, yte)
    for fn in (sqlite_vec_row, lancedb_row) if not args.faiss_only else ():
        try:
            out["rows"].append(fn(Xtr, ytr, Xte, yte, min(args.queries, len(Xte))))
        except Exception as exc:  # a peer that fails is reported, not fatal
            out["rows"].append({"peer": fn.__name__, "error": f"{exc.__class__.__name__}: {exc}"})
    for r in out["rows"]:
        if "query_s" in r:
            r["query_s_all"] = r["query_s"] * len(Xte) / r["queries"]
            r["total_s_all"] = r["load_s"] + r["query_s_all"]
    out["machine"] = markdown.machine()
    if args.headline.exists():
        out["clipvdb"] = json.loads(args.headline.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    if args.write:
        markdown.write("peers", render(out), ["BENCHMARKS.md"])
    return out


def render(out: dict) -> str:
    """The peers block: every system's load, query time and accuracy on the same job, one table."""
    rows = []
    cli = out.get("clipvdb")
    if cli:
        acc = cli["evaluate"]["stages"]["first"]["accuracy_pct"]
        rows.append(
            [
                "**clipvdb CLI** (`ingest` + `evaluate --stage first`; fresh home, cold, server start and "
                f"schema included; headline run, baseline {cli['baseline_s']:.1f} s there)",
                f"{cli['ingest_s']:.1f} s",
                f"{cli['evaluate_s']:.1f} s",
                f"{cli['ingest_s'] + cli['evaluate_s']:.1f} s",
                f"{acc:.2f} %",
            ]
        )
    for r in out["rows"]:
        if "error" in r:
            rows.append([r["peer"], f"failed: {r['error']}", "", "", ""])
            continue
        part = r["queries"] < out["queries_all"]
        q = (
            f"{r['query_s_all']:,.1f} s extrapolated ({r['queries']:,} in {r['query_s']:.1f} s)"
            if part
            else f"{r['query_s']:.1f} s"
        )
        acc = f"{r['accuracy']:.2f} %" + (f" of the first {r['queries']:,}" if part else "")
        rows.append([r["peer"], f"{r['load_s']:.1f} s", q, f"{r['total_s_all']:,.1f} s", acc])
    lines = [
        f"Measured {out['machine']}, one run of `python -m bench.peers` (part of `make bench`): stage first, the "
        f"same arrays, in-process exact baseline in the same run {out['baseline_s']:.1f} s, "
        f"{out['baseline_accuracy']:.2f} %. A peer too slow for all queries answered the first ones; its "
        "query time is extrapolated and its accuracy is over those only (labelled).",
        "",
        markdown.table(["system", "load + index", "all queries", "total", "accuracy"], rows),
    ]
    if cli:
        total = cli["ingest_s"] + cli["evaluate_s"]
        acc = cli["evaluate"]["stages"]["first"]["accuracy_pct"]
        dbs = [r for r in out["rows"] if "total_s_all" in r and not r["peer"].startswith("faiss")]
        faiss = {r["peer"]: r for r in out["rows"] if r["peer"].startswith("faiss") and "total_s_all" in r}
        lines.append("")
        for r in dbs:
            ahead = total < r["total_s_all"] and acc >= r["accuracy"]
            subset = f" over its first {r['queries']:,} queries" if r["queries"] < out["queries_all"] else ""
            lines.append(
                f"- Against {r['peer'].split(' (')[0]}: clipvdb's total is {r['total_s_all'] / total:.1f}x "
                f"faster, at {acc:.2f} % against its {r['accuracy']:.2f} %{subset} "
                f"({'ahead' if ahead else 'not ahead'})."
            )
        for name, r in faiss.items():
            lines.append(
                f"- Gap to {name}: queries {cli['evaluate_s'] / r['query_s']:.1f}x its time, total "
                f"{total / r['total_s_all']:.2f}x, accuracy {acc - r['accuracy']:+.2f} points "
                "(in-process: no persistence, no SQL, no reports)."
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
