"""The headline: the commands a user types, timed from the shell, against an in-process baseline.

    python -m bench.headline --data .cache/data/cifar10      # the extracted shared CIFAR-10 copy

Each command runs as a subprocess with a fresh CLIPVDB_HOME (cold: the embedded server starts,
the schema is created on first use) and is timed from outside. The baseline, run in the same
process and on the same machine, is exact 1-NN over the same pixel arrays (already decoded) with
batched matrix products: the in-process floor for the stage-first job.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import exact_baseline, load_pixels
from clipvdb.sources import open_source

CLI = [sys.executable, "-m", "clipvdb"]


def timed(args: list[str], env: dict) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(CLI + args, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip()[-400:]}")
    return elapsed, out.stdout


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--train", type=int, help="only the first N training images (default: all)")
    ap.add_argument("--test", type=int, help="only the first N test images (default: all)")
    ap.add_argument("--sample", help="an image to classify (default: the first test image)")
    ap.add_argument(
        "--clip",
        type=int,
        default=0,
        help="also time `ingest --stage all` of N images against the bare encoder (random RN50)",
    )
    ap.add_argument("--out", type=Path, default=Path("bench-out/headline.json"))
    args = ap.parse_args(argv)
    source = open_source(args.data)
    n_train = args.train or len(source.items("train"))
    n_test = args.test or len(source.items("test"))
    sample = args.sample or str(source.items("test")[0].path)

    home = Path(tempfile.mkdtemp(prefix="clipvdb-headline-"))
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    env.update(CLIPVDB_HOME=str(home), PYTHONUNBUFFERED="1")
    rows: dict = {"train": n_train, "test": n_test, "cores": os.cpu_count()}
    try:
        # baseline: in-process exact 1-NN over the decoded arrays
        Xtr, ytr, _ = load_pixels(source, "train", n_train)
        Xte, yte, _ = load_pixels(source, "test", n_test)
        nearest, base_s = exact_baseline(Xtr, Xte)
        rows["baseline_s"] = base_s
        rows["baseline_accuracy"] = float((ytr[nearest] == yte).mean() * 100)
        del Xtr, Xte

        rows["help_s"] = statistics.median(timed(["--help"], env)[0] for _ in range(3))
        limit = ["--limit", str(args.train)] if args.train else []
        rows["ingest_s"], out = timed(["ingest", "--stage", "first", "--data", args.data, "--json", *limit], env)
        rows["ingest"] = json.loads(out)
        num = ["--num", str(args.test)] if args.test else []
        rows["evaluate_s"], out = timed(["evaluate", "--stage", "first", "--data", args.data, "--json", *num], env)
        rows["evaluate"] = json.loads(out)
        rows["classify_s"] = statistics.median(
            timed(["classify", sample, "--stage", "first"], env)[0] for _ in range(3)
        )
        if args.clip:
            rows["clip"] = clip_stages(source, args.data, args.clip, env)
    finally:
        subprocess.run(CLI + ["db", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    acc = rows["evaluate"]["stages"]["first"]["accuracy_pct"]
    rows["ratios"] = {
        "ingest": rows["ingest_s"] / base_s,
        "evaluate": rows["evaluate_s"] / base_s,
        "accuracy_of_exact": acc / rows["baseline_accuracy"],
    }
    if "clip" in rows:
        rows["ratios"]["clip_ingest_of_bare_encoder"] = (
            rows["clip"]["ingest_images_per_s"] / rows["clip"]["bare_images_per_s"]
        )
        rows["ratios"]["clip_ingest_of_cold_bare_encoder"] = (
            rows["clip"]["ingest_images_per_s"] / rows["clip"]["bare_cold_images_per_s"]
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2, default=str))
    print(json.dumps({k: v for k, v in rows.items() if k not in ("ingest", "evaluate")}, indent=2, default=str))
    print(f"evaluate accuracy {acc} %; ingest index {rows['ingest']['index']}")
    return rows


def clip_stages(source, data: str, n: int, env: dict) -> dict:
    """`clipvdb ingest --stage all` of n images (random RN50 weights) against the bare encoder: the
    same images decoded and prepared beforehand, then only `encode` for all stages, batch 64."""
    from clipvdb.encoders import load_encoder
    from clipvdb.images import load_image
    from clipvdb.stages import parse_stages

    items = source.items("train")[:n]
    encoder = load_encoder("RN50", "random", "cpu", quiet=True)
    prepared = np.stack([encoder.prepare(load_image(it.path)) for it in items])
    stages = parse_stages("all")
    # cold, like the ingest's encoder: the first batch of a shape includes oneDNN building its kernels
    start = time.perf_counter()
    for s in range(0, n, 64):
        encoder.encode(prepared[s : s + 64], stages)
    bare_cold = n / (time.perf_counter() - start)
    start = time.perf_counter()  # warm: the same batches again, kernels cached
    for s in range(0, n, 64):
        encoder.encode(prepared[s : s + 64], stages)
    bare = n / (time.perf_counter() - start)
    # a dataset name of its own: stage first's rows of the main job stay as they are
    wall, out = timed(["ingest", "--stage", "all", "--pretrained", "random", "--data", data, "--limit", str(n),
                       "--dataset", "clip", "--json"], env)  # fmt: skip
    result = json.loads(out)
    return {"images": n, "bare_images_per_s": bare, "bare_cold_images_per_s": bare_cold,
            "ingest_images_per_s": result["images_per_s"],
            "ingest_wall_s": wall, "ingest": result}  # fmt: skip


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
