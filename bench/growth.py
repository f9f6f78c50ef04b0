"""Data that lives: a dataset grown by three ingests, then a tenth deleted and 1,000 images relabelled.

    python -m bench.growth --data .cache/data/cifar10 --scale-data .cache/data/cifar10-1m --write

Stage first, the scale set's training images (CIFAR-10's and augmented copies, bench/scale_data.py)
taken originals first; the queries are CIFAR-10's 10,000 test images. In one run, each command a
subprocess timed from outside:

- grown: a fresh CLIPVDB_HOME, `clipvdb ingest --stage first --limit N` for N = 50,000, 100,000 and
  200,000 (each load adds the next rows; the index upkeep rule decides what is rebuilt), then
  `clipvdb evaluate`;
- fresh: another home, one ingest of 200,000, then `clipvdb evaluate`;
- edits on the grown home: `clipvdb delete --vacuum --id ...` of every tenth stored image (20,000;
  the stage tables vacuumed after its commit), `clipvdb relabel --csv` of 1,000 others to the next
  class, then `clipvdb evaluate` again.

Recall@1 of each evaluate on a fixed sample of 1,000 queries (every tenth test image) against an
exact search in this process over the rows stored at the time; after the edits, whether each
answer's label is the one the edits gave its neighbour.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bench import markdown, statements
from bench.common import CLI, neighbor_sources, recall_with_ties
from bench.scale import exact_nearest, pixels_at, run
from bench.scale_data import make
from clipvdb import Store
from clipvdb.images import first_stage_vectors
from clipvdb.sources import open_source
from clipvdb.training import load_split

STEPS = [50_000, 100_000, 200_000]
SAMPLE_EVERY = 10  # every tenth test image: 1,000 queries
DELETE_EVERY = 10  # a tenth of the stored images
RELABEL = 1_000
GOALS = {"recall_of_fresh": 0.01}  # the grown index's recall@1 at most this below the fresh build's


def _evaluate(scale: str, env: dict, home: Path, sample_keys: list[str], position: dict[str, int]) -> dict:
    """`clipvdb evaluate`: its JSON, seconds, and each sample query's neighbour as a training position."""
    ev = run(["evaluate", "--stage", "first", "--data", scale, "--json"], env, home)
    out = {"evaluate": json.loads(ev.pop("stdout")), "seconds": ev["seconds"]}
    with Store(home=home) as store, store.connection() as conn:
        found = neighbor_sources(conn, out["evaluate"]["run_id"], "first")
        out["index"] = asdict(store.index_info("first"))
    out["found"] = [position.get(found.get(k, ""), -1) for k in sample_keys]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--scale-data", required=True, help="where the scale set is (made there when missing)")
    ap.add_argument("--steps", default=",".join(str(s) for s in STEPS), help="the sizes the ingests grow to")
    ap.add_argument("--out", type=Path, default=Path("bench-out/growth.json"))
    ap.add_argument("--write", action="store_true", help="rewrite the growth block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    steps = sorted(int(s) for s in args.steps.split(","))
    n = steps[-1]
    marker = Path(args.scale_data) / "scale.json"
    # a scale set made larger (bench.scale's million) serves: its first rows are the same
    made = json.loads(marker.read_text()) if marker.exists() else {}
    if made.get("params", {}).get("total", 0) < n or made["params"].get("kind", "distinct") != "distinct":
        made = make(Path(args.data), Path(args.scale_data), n)
    scale = args.scale_data
    source = open_source(scale)
    items = source.items("train")[:n]
    keys = [it.key for it in items]
    position = {k: i for i, k in enumerate(keys)}
    test_keys = [it.key for it in source.items("test")]
    sample = list(range(0, len(test_keys), SAMPLE_EVERY))
    sample_keys = [test_keys[i] for i in sample]
    train_pixels, labels, _ = load_split(source, "train", n)
    test_pixels, _, _ = load_split(source, "test")
    q = first_stage_vectors(test_pixels[sample])
    env_base = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    env_base["PYTHONUNBUFFERED"] = "1"

    def vectors_of(idx) -> np.ndarray:
        return first_stage_vectors(pixels_at(items, idx))

    result: dict = {"scale_set": made, "steps": steps, "sample": len(sample)}
    truth = exact_nearest(train_pixels, test_pixels[sample], [n])[n][0]
    homes = {name: Path(tempfile.mkdtemp(prefix=f"clipvdb-growth-{name}-")) for name in ("grown", "fresh")}
    try:
        for name, sizes in (("grown", steps), ("fresh", [n])):
            env = dict(env_base, CLIPVDB_HOME=str(homes[name]))
            loads = []
            for size in sizes:
                ing = run(
                    ["ingest", "--stage", "first", "--data", scale, "--limit", str(size), "--json"], env, homes[name]
                )
                stored = json.loads(ing.pop("stdout"))
                loads.append({"to": size, "seconds": ing["seconds"], "index": stored.get("index", {}).get("first")})
            ev = _evaluate(scale, env, homes[name], sample_keys, position)
            ev["recall_at_1"] = recall_with_ties(np.asarray(ev.pop("found")), truth, q, vectors_of)
            result[name] = {"loads": loads, **ev}
            print(json.dumps({name: {k: v for k, v in result[name].items() if k != "evaluate"}}, default=str))

        # the edits, on the grown home
        env = dict(env_base, CLIPVDB_HOME=str(homes["grown"]))
        with Store(home=homes["grown"]) as store, store.connection() as conn:
            rows = conn.execute(statements.TRAIN_SOURCES).fetchall()
            classes = store.dataset().classes
        gone = {int(i) for i, _ in rows[::DELETE_EVERY]}
        left = [(i, k) for i, k in rows if i not in gone]
        moved = {k for _, k in left[5::DELETE_EVERY][:RELABEL]}
        delete_args = ["delete", "--vacuum", "--json"] + [a for i in sorted(gone) for a in ("--id", str(i))]
        dele = run(delete_args, env, homes["grown"])
        result["delete"] = {"seconds": dele["seconds"], "edit": json.loads(dele["stdout"])}
        table = homes["grown"] / "relabel.csv"
        new_label = {k: (int(labels[position[k]]) + 1) % len(classes) for k in moved}
        with table.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["source", "class"])
            w.writerows((k, classes[c]) for k, c in sorted(new_label.items()))
        rel = run(["relabel", "--csv", str(table), "--json"], env, homes["grown"])
        result["relabel"] = {"seconds": rel["seconds"], "edit": json.loads(rel["stdout"])}
        print(json.dumps({k: result[k] for k in ("delete", "relabel")}, default=str)[:2000])

        keep = np.array([position[k] for _, k in left])
        keep_truth = keep[exact_nearest(train_pixels[keep], test_pixels[sample], [len(keep)])[len(keep)][0]]
        after = _evaluate(scale, env, homes["grown"], sample_keys, position)
        found = np.asarray(after.pop("found"))
        after["recall_at_1"] = recall_with_ties(found, keep_truth, q, vectors_of)
        after["answers_from_deleted"] = int(np.isin(found, [position[k] for i, k in rows if i in gone]).sum())
        label_now = {position[k]: new_label.get(k, int(labels[position[k]])) for _, k in left}
        with Store(home=homes["grown"]) as store, store.connection() as conn:
            got = dict(conn.execute(statements.RUN_PREDICTED, (after["evaluate"]["run_id"], "first")).fetchall())
        after["labels_right"] = sum(
            got.get(k) == label_now.get(int(f)) for k, f in zip(sample_keys, found, strict=True)
        )
        result["after_edits"] = after
        print(json.dumps({k: v for k, v in after.items() if k != "evaluate"}, default=str))
    finally:
        for home in homes.values():
            subprocess.run(CLI + ["db", "stop"], env=dict(env_base, CLIPVDB_HOME=str(home)), capture_output=True)
            shutil.rmtree(home, ignore_errors=True)
    result["machine"] = markdown.machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(render(result))
    if args.write:
        markdown.write("growth", render(result), ["BENCHMARKS.md"])
    return result


def _index(load_or_eval: dict | None) -> str:
    if not load_or_eval:
        return "kept"
    params = load_or_eval.get("params", {})
    shown = ", ".join(f"{k}={params[k]}" for k in ("project", "lists", "m", "ef_search") if k in params)
    return f"{load_or_eval.get('kind')} {shown}".strip()


def render(r: dict) -> str:
    grown, fresh, after = r["grown"], r["fresh"], r["after_edits"]
    n = r["steps"][-1]
    acc = lambda part: f"{part['evaluate']['stages']['first']['accuracy_pct']:.2f} %"  # noqa: E731
    rows = []
    for load in grown["loads"]:
        rows.append([f"grown: ingest to {load['to']:,}", f"{load['seconds']:.0f} s", _index(load["index"]), "", "", ""])
    rows.append(
        [f"grown: evaluate at {n:,}", f"{grown['seconds']:.1f} s", "", f"{grown['recall_at_1']:.3f}", acc(grown), ""]
    )
    rows.append(
        [
            f"fresh: ingest {n:,}",
            f"{fresh['loads'][0]['seconds']:.0f} s",
            _index(fresh["loads"][0]["index"]),
            "",
            "",
            "",
        ]
    )
    rows.append(
        [f"fresh: evaluate at {n:,}", f"{fresh['seconds']:.1f} s", "", f"{fresh['recall_at_1']:.3f}", acc(fresh), ""]
    )
    d, rl = r["delete"]["edit"], r["relabel"]["edit"]
    rows.append(
        [
            f"grown: delete --vacuum {d['images']:,} images",
            f"{r['delete']['seconds']:.1f} s",
            f"vacuumed {len(d.get('vacuumed') or [])} tables in {d.get('vacuum_s') or 0:.1f} s",
            "",
            "",
            "; ".join(d.get("indexes_due") or []) or "",
        ]
    )
    rows.append([f"grown: relabel {rl['images']:,} images (CSV)", f"{r['relabel']['seconds']:.1f} s", "", "", "", ""])
    rows.append(
        [
            "grown: evaluate after the edits",
            f"{after['seconds']:.1f} s",
            "",
            f"{after['recall_at_1']:.3f}",
            acc(after),
            f"{after['answers_from_deleted']} answers from deleted rows; "
            f"{after['labels_right']:,} of {r['sample']:,} with the label the edits left",
        ]
    )
    gap = fresh["recall_at_1"] - grown["recall_at_1"]
    met = "met" if gap <= GOALS["recall_of_fresh"] else "not met"
    head = (
        f"Measured {r['machine']}, one run of `python -m bench.growth`: stage first, the scale set's first "
        f"{n:,} training images (CIFAR-10's and augmented copies); every command a subprocess, each home fresh. "
        f"Recall@1 on {r['sample']:,} test images against an exact search in process over the rows stored then."
    )
    lines = [
        head,
        "",
        markdown.table(["step", "command s", "index", "recall@1", "accuracy", "note"], rows),
        "",
        f"- Grown recall@1 {grown['recall_at_1']:.3f} against the fresh build's {fresh['recall_at_1']:.3f} "
        f"(goal: within {GOALS['recall_of_fresh']}): **{met}**.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
