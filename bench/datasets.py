"""Filtered search: one dataset's searches when the database holds another beside it (stage first).

    python -m bench.datasets --data .cache/data/cifar10 --write

Two fresh CLIPVDB_HOMEs, the commands a user types as subprocesses: `alone` stores CIFAR-10's
training images as dataset a; `shared` stores them as dataset a and again as dataset b (the same
images under another name: the worst case for a filter, every row of b as near to a query as a's).
Each then runs `clipvdb evaluate --stage first --dataset a` over the 10,000 test images: once cold,
then WARM more times. Reported: accuracy, the warm per-query ms (report_timing, mean of the warm
runs), the shared database's over the alone one's, and how many queries got the same nearest
neighbour (by source key) in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench import markdown
from bench.common import CLI, neighbor_sources, timed
from clipvdb import Store

WARM = 2
GOAL = 1.2  # the shared database's warm query ms over the alone one's, at most


def _query_ms(store: Store, run_id: int) -> float:
    t = next(x for x in store.report("report_timing", run_id) if x["stage"] == "first")
    return float(t["query_ms_mean"])


def measure(name: str, data: str, datasets: list[str], env_base: dict) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"clipvdb-datasets-{name}-"))
    env = dict(env_base, CLIPVDB_HOME=str(home))
    try:
        for ds in datasets:
            timed(["ingest", "--stage", "first", "--data", data, "--dataset", ds, "--json"], env)
        runs = []
        for _ in range(1 + WARM):
            seconds, out = timed(["evaluate", "--stage", "first", "--data", data, "--dataset", "a", "--json"], env)
            runs.append((seconds, json.loads(out)))
        with Store(home=home) as store:
            status = store.index_info("first", "a")
            warm = [_query_ms(store, r["run_id"]) for _, r in runs[1:]]
            with store.connection() as conn:
                found = neighbor_sources(conn, runs[0][1]["run_id"], "first")
        return {
            "name": name,
            "datasets": datasets,
            "rows": status.rows,
            "stored": sum(sp.rows for sp in store.status().spaces if sp.stage == "first"),
            "index": {"kind": status.kind, **status.params},
            "accuracy": runs[0][1]["stages"]["first"]["accuracy_pct"],
            "cold_query_ms": runs[0][1]["stages"]["first"]["query_s"] * 1000 / runs[0][1]["stages"]["first"]["n"],
            "warm_query_ms": sum(warm) / len(warm),
            "command_s": [round(s, 2) for s, _ in runs],
            "found": found,
        }
    finally:
        subprocess.run(CLI + ["db", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def render(result: dict) -> str:
    alone, shared = result["alone"], result["shared"]
    same = sum(shared["found"].get(q) == n for q, n in alone["found"].items())
    ratio = shared["warm_query_ms"] / alone["warm_query_ms"]
    rows = [
        [
            r["name"],
            ", ".join(r["datasets"]),
            f"{r['stored']:,}",
            f"{r['rows']:,}",
            f"{r['index']['kind']} project={r['index'].get('project')}",
            f"{r['accuracy']:.2f} %",
            f"{r['cold_query_ms']:.3f}",
            f"{r['warm_query_ms']:.3f}",
            " / ".join(f"{s:.1f}" for s in r["command_s"]),
        ]
        for r in (alone, shared)
    ]
    return "\n".join(
        [
            f"Measured {result['machine']}, one run of `python -m bench.datasets`: CIFAR-10's 50,000 training "
            "images stored as dataset a alone, and as datasets a and b (the same images twice) in one database; "
            f"`clipvdb evaluate --stage first --dataset a` over the 10,000 test images, cold then {WARM} warm.",
            "",
            markdown.table(
                [
                    "database",
                    "datasets",
                    "rows at stage first",
                    "rows in a's index",
                    "index",
                    "accuracy",
                    "query ms (cold)",
                    "query ms (warm)",
                    "evaluate s (cold / warm)",
                ],
                rows,
            ),
            "",
            f"- Same nearest neighbour in both databases: {same:,} of {len(alone['found']):,} queries.",
            f"- Warm query ms of dataset a beside b over a alone: {ratio:.2f}x (goal <= {GOAL}x): "
            f"{'**met**' if ratio <= GOAL else '**not met**'}.",
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/datasets.json"))
    ap.add_argument("--write", action="store_true", help="rewrite the datasets block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    result = {
        "alone": measure("alone", args.data, ["a"], env),
        "shared": measure("shared", args.data, ["a", "b"], env),
        "machine": markdown.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(render(result))
    if args.write:
        markdown.write("datasets", render(result), ["BENCHMARKS.md"])
    return result


if __name__ == "__main__":
    main()
