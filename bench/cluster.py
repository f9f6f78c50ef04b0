"""The cluster item: the same stage-first job on one node and on a local Citus cluster, same run.

    python -m bench.cluster --data .cache/data/cifar10 --train 10000 --test 1000

Every command runs as a subprocess with a fresh CLIPVDB_HOME, as a user types it: on the single
embedded server, on `db nodes start --workers 2` and on `--workers 3`, `ingest`, then `evaluate`
(default path and --exact) in rounds: every home is up at once and the evaluates are interleaved,
the order turning each round, so a drift of the machine reaches all three alike; each path's run
with the median query time stands. The in-process exact 1-NN over the same pixel arrays is the
accuracy reference. On one machine the workers share its cores with the coordinator, so the
cluster cannot be faster: the item shows correctness and overhead, and the CPU every node spends
per query.

Per-shard bytes per row (heap and index, measured on the cluster) are extrapolated to 10 million,
100 million and 1 billion vectors per stage for docs/citus.md ("Bytes per row and an estimate for
larger sets"): estimates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import psycopg

from bench import markdown, statements
from bench.common import (
    CLI,
    FakeEncoder,
    exact_baseline,
    load_pixels,
    neighbor_sources,
    recall_with_ties,
    server_cpu_s,
    timed,
)
from clipvdb import STAGES, Store
from clipvdb.sources import open_source

SCALES = (10_000_000, 100_000_000, 1_000_000_000)
ROWS_PER_SHARD = 5_000_000  # a shard small enough to rebuild its index in minutes and to move
WORKER_RAM_GB = 128  # a worker's memory; half of it for the hot set (ANN index, projections)


def set_up(data: str, n_train: int, env: dict, workers: int) -> dict:
    """Start the nodes (a cluster) and ingest the training images, each command timed."""
    row: dict = {}
    if workers:
        row["nodes_start_s"], _ = timed(["db", "nodes", "start", "--workers", str(workers), "--json"], env)
    row["ingest_s"], out = timed(
        ["ingest", "--stage", "first", "--data", data, "--split", "train", "--limit", str(n_train), "--json"], env
    )
    row["ingest"] = json.loads(out)
    return row


def evaluate_once(data: str, n_test: int, home: Path, env: dict, exact: bool) -> dict:
    """One evaluate command: its time, the query time it reports, and the CPU the home's nodes
    spent during it per query: all of them, and the coordinator's (one node's: all)."""
    cpu0 = server_cpu_s(home)
    seconds, out = timed(
        [
            "evaluate",
            "--stage",
            "first",
            "--data",
            data,
            "--limit",
            str(n_test),
            "--json",
            *(["--exact"] if exact else []),
        ],
        env,
    )
    cpu1 = server_cpu_s(home)
    spent = {node: cpu1[node] - cpu0.get(node, 0.0) for node in cpu1}
    if not spent or sum(spent.values()) <= 0:
        raise SystemExit(f"no CPU time found for the servers of {home}: are they running?")
    result = json.loads(out)
    first = result["stages"]["first"]
    return {
        "command_s": seconds,
        "query_s": first["batch_query_s"],  # the statements' own time, summed over batches
        "server_cpu_ms_per_query": sum(spent.values()) * 1000 / first["n"],
        "coordinator_cpu_ms_per_query": spent.get("pgdata", 0.0) * 1000 / first["n"],
        "accuracy_pct": first["accuracy_pct"],
        "run_id": result["run_id"],
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median query time, every run's figures beside it."""
    return {**sorted(runs, key=lambda r: r["query_s"])[len(runs) // 2], "runs": runs}


def recall_at_1(home: Path, run_id: int, truth: dict) -> float:
    """The share of queries whose stored nearest neighbor is the exact nearest of the in-process
    search, or as near as it (a tie)."""
    with Store(home=home) as store, store.connection() as conn:
        found = neighbor_sources(conn, run_id, "first")
    position = {k: i for i, k in enumerate(truth["train_keys"])}
    found_at = np.array([position.get(found.get(key, ""), -1) for key in truth["test_keys"]])
    return recall_with_ties(found_at, truth["nearest"], truth["Xte"], lambda idx: truth["Xtr"][idx])


def grow_under_load(data: str, n_test: int, env: dict) -> dict:
    """On a running cluster: `db nodes add` and `db nodes rebalance` while an evaluate of the same
    queries runs beside them; its exit status and accuracy against the same evaluate before."""
    import time

    evaluate = [*CLI, "evaluate", "--stage", "first", "--data", data, "--limit", str(n_test), "--json"]
    proc = subprocess.Popen(evaluate, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the evaluate past its start-up, querying
    add_s, _ = timed(["db", "nodes", "add", "--json"], env)
    rebalance_s, out = timed(["db", "nodes", "rebalance", "--json"], env)
    stdout, stderr = proc.communicate(timeout=600)
    during = json.loads(stdout)["stages"]["first"] if proc.returncode == 0 else None
    return {
        "add_s": add_s,
        "rebalance_s": rebalance_s,
        "rebalance": json.loads(out),
        "evaluate_exit": proc.returncode,
        "evaluate_error": stderr.strip().splitlines()[-1:] if proc.returncode else [],
        "evaluate_accuracy_pct": during["accuracy_pct"] if during else None,
    }


def _sizes(conn: psycopg.Connection, table: str) -> dict:
    """Rows, shards, and heap (with TOAST) and index bytes per row of a distributed table, summed
    over its shards on the workers."""
    rows = conn.execute(statements.table_rows(table)).fetchone()[0]
    heap, index, shards = conn.execute(statements.SHARD_SIZES, (table, table)).fetchone()
    return {
        "rows": rows,
        "shards": shards,
        "heap_bytes_per_row": float(heap) / max(rows, 1),
        "index_bytes_per_row": float(index) / max(rows, 1),
    }


def shard_figures(home: Path, source, n: int = 2000) -> dict:
    """Measured on the cluster: stage first's tables from the job, and for the CLIP stages `n`
    random vectors stored with Store.load_vectors (their default index, ivfflat on the full
    vectors): what a row costs on the workers, per table."""
    out: dict = {}
    with Store(home=home, encoder=FakeEncoder()) as store:
        rng = np.random.default_rng(0)
        for name in ("second", "third", "origin"):
            stage = STAGES[name]
            vectors = rng.standard_normal((n, stage.dim)).astype(np.float32)
            keys = [f"random/{name}/{i}" for i in range(n)]
            store.load_vectors(name, vectors, keys, rng.integers(0, 10, n), source, split=f"sizes-{name}")
        with store.connection() as conn:
            for table in ("images", *(s.table for s in STAGES.values()), STAGES["first"].projection_table):
                out[table] = _sizes(conn, table)
    return out


def scale_estimates(figures: dict) -> list[dict]:
    """Extrapolate the measured bytes per row to SCALES vectors per stage: disk (stage table,
    its projection at stage first, the image rows) and the hot set a worker should keep in memory
    (the ANN index, and at stage first the projections it re-ranks from)."""
    images = figures["images"]["heap_bytes_per_row"] + figures["images"]["index_bytes_per_row"]
    out = []
    for name in STAGES:
        table = figures[f"embeddings_{name}"]
        disk = table["heap_bytes_per_row"] + table["index_bytes_per_row"] + images
        hot = table["index_bytes_per_row"]
        if name == "first":
            proj = figures["projections_first"]
            disk += proj["heap_bytes_per_row"] + proj["index_bytes_per_row"]
            hot += proj["heap_bytes_per_row"] + proj["index_bytes_per_row"]
        for n in SCALES:
            workers = max(2, math.ceil(n * hot / (WORKER_RAM_GB * 2**30 * 0.5)))
            shards = max(2 * workers, math.ceil(n / ROWS_PER_SHARD))
            shards = math.ceil(shards / workers) * workers
            out.append(
                {
                    "stage": name,
                    "vectors": n,
                    "bytes_per_row": round(disk),
                    "hot_bytes_per_row": round(hot),
                    "disk_tb": n * disk / 2**40,
                    "workers": workers,
                    "shards": shards,
                    "disk_gb_per_worker": n * disk / 2**30 / workers,
                    "hot_gb_per_worker": n * hot / 2**30 / workers,
                }
            )
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=1_000)
    ap.add_argument("--out", type=Path, default=Path("bench-out/cluster.json"))
    ap.add_argument("--repeat", type=int, default=3, help="rounds of evaluates; each path's median run stands")
    ap.add_argument("--write", action="store_true", help="rewrite the cluster block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    source = open_source(args.data)
    result: dict = {"train": args.train, "test": args.test, "repeat": args.repeat, "cores": os.cpu_count()}
    Xtr, ytr, train_keys = load_pixels(source, "train", args.train)
    Xte, yte, test_keys = load_pixels(source, "test", args.test)
    nearest, base_s = exact_baseline(Xtr, Xte)
    result["baseline"] = {"seconds": base_s, "accuracy_pct": float((ytr[nearest] == yte).mean() * 100)}
    truth = {"Xtr": Xtr, "Xte": Xte, "nearest": nearest, "train_keys": train_keys, "test_keys": test_keys}
    configs = (("single", 0), ("cluster", 2), ("cluster3", 3))
    homes = {name: Path(tempfile.mkdtemp(prefix=f"clipvdb-{name}-")) for name, _ in configs}
    envs = {}
    for name, _ in configs:
        env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
        envs[name] = {**env, "CLIPVDB_HOME": str(homes[name]), "PYTHONUNBUFFERED": "1"}
    try:
        for name, workers in configs:
            result[name] = set_up(args.data, args.train, envs[name], workers)
        # every home up at once, the evaluates interleaved (the order turning each round), so
        # that a drift of the machine over the run reaches one node and the clusters alike
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(args.repeat):
            turn = round_ % len(configs)
            for name, _ in configs[turn:] + configs[:turn]:
                for path in ("default", "exact"):
                    run = evaluate_once(args.data, args.test, homes[name], envs[name], path == "exact")
                    runs.setdefault((name, path), []).append(run)
        for name, _ in configs:
            for path in ("default", "exact"):
                result[name][path] = median_run(runs[name, path])
                result[name][path]["recall_at_1"] = recall_at_1(homes[name], result[name][path]["run_id"], truth)
        result["grow"] = grow_under_load(args.data, args.test, envs["cluster"])
        result["nodes"] = json.loads(timed(["db", "nodes", "status", "--json"], envs["cluster"])[1])
        result["shards"] = shard_figures(homes["cluster"], source)
    finally:
        for name, workers in configs:
            stop = ["db", "nodes", "stop"] if workers else ["db", "stop"]
            subprocess.run(CLI + stop, env=envs[name], capture_output=True)
            shutil.rmtree(homes[name], ignore_errors=True)
    result["estimates"] = scale_estimates(result["shards"])
    s, c, c3 = result["single"], result["cluster"], result["cluster3"]
    result["ratios"] = {
        "ingest_cluster_over_single": c["ingest_s"] / s["ingest_s"],
        "default_query_cluster_over_single": c["default"]["query_s"] / s["default"]["query_s"],
        "exact_query_cluster_over_single": c["exact"]["query_s"] / s["exact"]["query_s"],
        "ingest_cluster3_over_single": c3["ingest_s"] / s["ingest_s"],
        "default_query_cluster3_over_single": c3["default"]["query_s"] / s["default"]["query_s"],
        "exact_query_cluster3_over_single": c3["exact"]["query_s"] / s["exact"]["query_s"],
    }
    result["machine"] = markdown.machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k not in ("nodes", "estimates")}, indent=2, default=str))
    if args.write:
        markdown.write("cluster", render(result), ["BENCHMARKS.md"])
    return result


def render(r: dict) -> str:
    """The cluster block: one node against the cluster, bytes per row, and the labelled estimates."""
    s, c, c3, q, g = r["single"], r["cluster"], r["cluster3"], r["ratios"], r["grow"]

    def pair(x: dict) -> str:
        spread = sorted(run["query_s"] for run in x["runs"])
        return f"{x['query_s']:.2f} ({spread[0]:.2f}-{spread[-1]:.2f}) / {x['command_s']:.1f}"

    def cpu(x: dict) -> str:
        return f"{x['server_cpu_ms_per_query']:.2f} ({x['coordinator_cpu_ms_per_query']:.2f})"

    def cpu_ratios(path: str) -> str:
        base = s[path]["server_cpu_ms_per_query"]
        return " / ".join(f"{x[path]['server_cpu_ms_per_query'] / base:.2f}x" for x in (c, c3))

    def acc(x: dict, name: str) -> str:
        return f"{x[name]['accuracy_pct']:.2f} %"

    rows = [
        [
            "`ingest --stage first` with its index (command)",
            f"{s['ingest_s']:.1f} s",
            f"{c['ingest_s']:.1f} s",
            f"{c3['ingest_s']:.1f} s",
            f"{q['ingest_cluster_over_single']:.2f}x / {q['ingest_cluster3_over_single']:.2f}x the time",
        ],
        ["`db nodes start` (first time)", "", f"{c['nodes_start_s']:.1f} s", f"{c3['nodes_start_s']:.1f} s", ""],
        ["`evaluate` default path: accuracy", acc(s, "default"), acc(c, "default"), acc(c3, "default"), ""],
        [
            "`evaluate` default path: recall@1 (the exact nearest found)",
            *(f"{x['default']['recall_at_1']:.3f}" for x in (s, c, c3)),
            "",
        ],
        [
            f"`evaluate` default path: query s (summed, 2 connections; median ({r['repeat']} runs' range)) / command s",
            pair(s["default"]),
            pair(c["default"]),
            pair(c3["default"]),
            f"{q['default_query_cluster_over_single']:.2f}x / {q['default_query_cluster3_over_single']:.2f}x",
        ],
        [
            "`evaluate` default path: server CPU ms per query, every node (the coordinator's)",
            *(cpu(x["default"]) for x in (s, c, c3)),
            cpu_ratios("default"),
        ],
        ["`evaluate --exact`: accuracy", acc(s, "exact"), acc(c, "exact"), acc(c3, "exact"), ""],
        ["`evaluate --exact`: recall@1", *(f"{x['exact']['recall_at_1']:.3f}" for x in (s, c, c3)), ""],
        [
            "`evaluate --exact`: query s (median (range)) / command s",
            pair(s["exact"]),
            pair(c["exact"]),
            pair(c3["exact"]),
            f"{q['exact_query_cluster_over_single']:.2f}x / {q['exact_query_cluster3_over_single']:.2f}x",
        ],
        [
            "`evaluate --exact`: server CPU ms per query, every node (the coordinator's)",
            *(cpu(x["exact"]) for x in (s, c, c3)),
            cpu_ratios("exact"),
        ],
    ]
    grow = (
        f"Growing the 2-worker cluster while an `evaluate` of the same {r['test']:,} queries runs beside it: "
        f"`db nodes add` {g['add_s']:.1f} s, `db nodes rebalance` {g['rebalance_s']:.1f} s "
        f"({g['rebalance']['moves']} shard moves); the evaluate "
        + (
            f"exited 0 at {g['evaluate_accuracy_pct']:.2f} % (the same queries before: "
            f"{c['default']['accuracy_pct']:.2f} %)."
            if g["evaluate_exit"] == 0
            else f"failed ({g['evaluate_exit']}: {' '.join(g['evaluate_error'])})."
        )
    )
    sizes = [
        [
            f"`{t}`",
            f"{v['rows']:,}",
            str(v["shards"]),
            f"{v['heap_bytes_per_row']:,.0f}",
            f"{v['index_bytes_per_row']:,.0f}",
        ]
        for t, v in r["shards"].items()
    ]
    est = [
        [
            e["stage"],
            f"{e['vectors']:,}",
            f"{e['bytes_per_row']:,}",
            f"{e['hot_bytes_per_row']:,}",
            f"{e['disk_tb']:.2f}",
            str(e["workers"]),
            str(e["shards"]),
            f"{e['disk_gb_per_worker']:,.0f}",
            f"{e['hot_gb_per_worker']:,.0f}",
        ]
        for e in r["estimates"]
    ]
    est_header = [
        "stage",
        "vectors",
        "disk bytes/row",
        "hot bytes/row",
        "disk TB",
        "workers",
        "shards",
        "disk GB/worker",
        "hot GB/worker",
    ]
    return "\n".join(
        [
            f"Measured {r['machine']}, one run of `python -m bench.cluster` (part of `make bench` when the "
            "Citus source is there). Every command a subprocess with a fresh `CLIPVDB_HOME`: one node, `db nodes "
            "start --workers 2` and `--workers 3` (2 shards per worker), same run. The workers share the machine's "
            "cores with the coordinator, so on one machine the cluster shows correctness and overhead, not speed. "
            f"Stage first, the first {r['train']:,} CIFAR-10 training images stored, the first {r['test']:,} test "
            f"images queried. In-process exact 1-NN over the same arrays: {r['baseline']['accuracy_pct']:.2f} % in "
            f"{r['baseline']['seconds']:.2f} s. The three homes are up at once and their evaluates interleaved in "
            f"{r['repeat']} rounds, the order of the homes turning each round (a home runs the default path, then "
            "the exact one): each path's run with the median query time stands, the runs' range in parentheses. "
            "Server CPU: what every node's PostgreSQL processes spent during the command, per query, and of it the "
            "coordinator's (one node's: all of it); on separate machines the workers' share bounds a cluster's "
            "throughput and the coordinator's share what one coordinator can serve.",
            "",
            markdown.table(["", "one node", "2 workers", "3 workers", "2 / 3 workers over one node"], rows),
            "",
            grow,
            "",
            "Bytes per row on the workers (sums over the shards; `pg_table_size` includes TOAST; the CLIP stages are "
            "2,000 random vectors loaded with `Store.load_vectors`, default index: ivfflat on the full vectors):",
            "",
            markdown.table(["table", "rows", "shards", "heap bytes/row", "index bytes/row"], sizes),
            "",
            "Extrapolated (estimates, not measurements): disk per row = stage table heap + index + image row (+ "
            "projection at stage first); hot = the ANN index (+ projections at stage first), to stay in memory; a worker "
            "with 128 GB gives half to the hot set; shards of at most 5 million rows, at least two per worker.",
            "",
            markdown.table(est_header, est),
        ]
    )


if __name__ == "__main__":
    main()
