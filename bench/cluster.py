"""The cluster item: the same stage-first job on one node and on a local Citus cluster, same run.

    python -m bench.cluster --data .cache/data/cifar10 --train 10000 --test 1000

Every command runs as a subprocess with a fresh CLIPVDB_HOME, as a user types it: `ingest` and
`evaluate` (default path and --exact) on the single embedded server, then `db nodes start
--workers 2` and the same commands on the coordinator. The in-process exact 1-NN over the same
pixel arrays is the accuracy reference. On this 2-core machine the two workers share the cores
with the coordinator, so the cluster cannot be faster: the item shows correctness and overhead.

Per-shard bytes per row (heap and index, measured on the cluster) are extrapolated to 10 million,
100 million and 1 billion vectors per stage for the README's "Scaling out" table: estimates.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from bench.common import exact_baseline, load_pixels
from clipvdb.sources import open_source
from clipvdb.stages import STAGES

CLI = [sys.executable, "-m", "clipvdb"]
SCALES = (10_000_000, 100_000_000, 1_000_000_000)
ROWS_PER_SHARD = 5_000_000  # a shard small enough to rebuild its index in minutes and to move
WORKER_RAM_GB = 128  # what one worker offers its hot set (projections and their index)


def timed(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(CLI + args, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[-600:]}")
    return elapsed, out.stdout


def run_job(data: str, n_train: int, n_test: int, env: dict, cluster: bool) -> dict:
    row: dict = {}
    if cluster:
        row["nodes_start_s"], _ = timed(["db", "nodes", "start", "--workers", "2", "--json"], env)
    row["ingest_s"], out = timed(
        ["ingest", "--stage", "first", "--data", data, "--split", "train", "--limit", str(n_train), "--json"], env
    )
    row["ingest"] = json.loads(out)
    for name, extra in (("default", []), ("exact", ["--exact"])):
        seconds, out = timed(
            ["evaluate", "--stage", "first", "--data", data, "--num", str(n_test), "--json", *extra], env
        )
        result = json.loads(out)
        row[name] = {"command_s": seconds, "query_s": result["stages"]["first"]["query_s"],
                     "accuracy_pct": result["stages"]["first"]["accuracy_pct"]}  # fmt: skip
    return row


def shard_figures(url: str) -> dict:
    """Bytes per row of the stage-first tables and their indexes, summed over the shards."""
    out: dict = {}
    with psycopg.connect(url) as conn:
        for table in ("embeddings_first", "projections_first", "images"):
            rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            heap, index, shards = conn.execute(
                """SELECT sum((h.result)::bigint), sum((i.result)::bigint), count(*)
                   FROM run_command_on_shards(%s, 'SELECT pg_table_size(''%%s'')') h
                   JOIN run_command_on_shards(%s, 'SELECT pg_indexes_size(''%%s'')') i USING (shardid)""",
                (table, table),
            ).fetchone()
            heap, index = float(heap), float(index)
            out[table] = {"rows": rows, "shards": shards, "heap_bytes_per_row": heap / max(rows, 1),
                          "index_bytes_per_row": index / max(rows, 1)}  # fmt: skip
    return out


def scale_estimates(figures: dict) -> list[dict]:
    """Extrapolate: the vector column's width per stage plus the measured row and index overheads
    of stage first (its halfvec(3072) is 6,152 bytes of the measured heap row)."""
    first = figures["embeddings_first"]
    overhead = first["heap_bytes_per_row"] - (2 * 3072 + 8)
    proj = figures["projections_first"]
    images = figures["images"]
    out = []
    for name, stage in STAGES.items():
        width = (2 if stage.column_type == "halfvec" else 4) * stage.dim + 8
        per_row = width + overhead + first["index_bytes_per_row"] + images["heap_bytes_per_row"] + images[
            "index_bytes_per_row"]  # fmt: skip
        hot = proj["heap_bytes_per_row"] + proj["index_bytes_per_row"]
        for n in SCALES:
            shards = max(2, math.ceil(n / ROWS_PER_SHARD))
            workers = max(2, math.ceil(n * hot / (WORKER_RAM_GB * 2**30 * 0.5)))
            out.append({"stage": name, "vectors": n, "total_gb": n * (per_row + hot) / 2**30,
                        "hot_gb": n * hot / 2**30, "shards": shards, "workers": workers,
                        "disk_gb_per_worker": n * (per_row + hot) / 2**30 / workers,
                        "hot_gb_per_worker": n * hot / 2**30 / workers})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=1_000)
    ap.add_argument("--out", type=Path, default=Path("bench-out/cluster.json"))
    args = ap.parse_args(argv)
    source = open_source(args.data)
    result: dict = {"train": args.train, "test": args.test, "cores": os.cpu_count()}
    Xtr, ytr, _ = load_pixels(source, "train", args.train)
    Xte, yte, _ = load_pixels(source, "test", args.test)
    nearest, base_s = exact_baseline(Xtr, Xte)
    result["baseline"] = {"seconds": base_s, "accuracy_pct": float((ytr[nearest] == yte).mean() * 100)}
    del Xtr, Xte
    for name, cluster in (("single", False), ("cluster", True)):
        home = Path(tempfile.mkdtemp(prefix=f"clipvdb-{name}-"))
        env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
        env.update(CLIPVDB_HOME=str(home), PYTHONUNBUFFERED="1")
        try:
            result[name] = run_job(args.data, args.train, args.test, env, cluster)
            if cluster:
                url = timed(["db", "url"], env)[1].strip()
                result["shards"] = shard_figures(url)
                result["nodes"] = json.loads(timed(["db", "nodes", "status", "--json"], env)[1])
        finally:
            stop = ["db", "nodes", "stop"] if cluster else ["db", "stop"]
            subprocess.run(CLI + stop, env=env, capture_output=True)
            shutil.rmtree(home, ignore_errors=True)
    result["estimates"] = scale_estimates(result["shards"])
    s, c = result["single"], result["cluster"]
    result["ratios"] = {
        "ingest_cluster_over_single": c["ingest_s"] / s["ingest_s"],
        "default_query_cluster_over_single": c["default"]["query_s"] / s["default"]["query_s"],
        "exact_query_cluster_over_single": c["exact"]["query_s"] / s["exact"]["query_s"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k not in ("nodes", "estimates")}, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
