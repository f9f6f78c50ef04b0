"""The study's trade-off with trained weights: `clipvdb train`, then every stage of its checkpoint.

    python -m bench.trained --data .cache/data/cifar10 --write

One run, fresh CLIPVDB_HOME, each command a subprocess timed from outside, as a user types them:
`clipvdb train` on the 50,000 training images (its default time budget), `clipvdb ingest --stage all
--model CKPT`, `clipvdb evaluate --stage all --model CKPT --k 1,5,20` over the 10,000 test images.
Accuracy per stage and per (k, vote) come from the report views; encoder ms per image at batch 256
is measured in this process on the checkpoint (the same images, decoded beforehand).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import markdown
from bench.common import CLI, timed
from clipvdb import Store
from clipvdb.sources import open_source
from clipvdb.stages import parse_stages
from clipvdb.trained_model import TrainedEncoder
from clipvdb.training import load_split

GOAL_TRAIN_S = 15 * 60
GOAL_THIRD_PCT = 85.0
GOAL_ENCODE_MS = 1.0
STUDY_PCT = {"first": 35.39, "second": 71.5, "third": 77.31, "origin": 70.53}


def encoder_ms(checkpoint: Path, pixels: np.ndarray, batch: int = 256) -> dict[str, float]:
    """ms per image for each stage alone at `batch` images per call (the best of two passes)."""
    enc = TrainedEncoder(checkpoint)
    out = {}
    for name in ("second", "third", "origin"):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            for i in range(0, len(pixels), batch):
                enc.encode(pixels[i : i + batch], parse_stages(name))
            best = min(best, time.perf_counter() - t0)
        out[name] = best * 1000 / len(pixels)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--minutes", type=float, help="clipvdb train --minutes (default: its own default)")
    ap.add_argument("--checkpoint", type=Path, help="skip training: evaluate this checkpoint")
    ap.add_argument("--keep", type=Path, help="copy the trained checkpoint here")
    ap.add_argument("--out", type=Path, default=Path("bench-out/trained.json"))
    ap.add_argument("--write", action="store_true", help="rewrite the trained block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    source = open_source(args.data)
    home = Path(tempfile.mkdtemp(prefix="clipvdb-trained-"))
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    env.update(CLIPVDB_HOME=str(home), PYTHONUNBUFFERED="1")
    r: dict = {"data": args.data, "cores": os.cpu_count()}
    try:
        ckpt = args.checkpoint
        if ckpt is None:
            ckpt = home / "cnn.pt"
            extra = ["--minutes", str(args.minutes)] if args.minutes else []
            r["train_s"], out = timed(["train", "--data", args.data, "--out", str(ckpt), "--json", *extra], env)
            r["train"] = json.loads(out)
            if args.keep:
                shutil.copyfile(ckpt, args.keep)
        model = ["--model", str(ckpt)]
        r["ingest_s"], out = timed(["ingest", "--stage", "all", "--data", args.data, "--json", *model], env)
        r["ingest"] = json.loads(out)
        r["evaluate_s"], out = timed(
            ["evaluate", "--stage", "all", "--data", args.data, "--k", "1,5,20", "--json", *model], env
        )
        r["evaluate"] = json.loads(out)
        with Store(home=home, model=str(ckpt)) as store:
            run = r["evaluate"]["run_id"]
            r["by_k"] = store.report("report_accuracy_by_k", run)
            r["timing"] = store.report("report_timing", run)
        test_pixels, _, _ = load_split(source, "test")
        r["encoder_ms_batch256"] = encoder_ms(ckpt, test_pixels)
    finally:
        subprocess.run(CLI + ["db", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    r["machine"] = markdown.machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2, default=str))
    print(render(r))
    if args.write:
        markdown.write("trained", render(r), ["BENCHMARKS.md"])
    return r


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def render(r: dict) -> str:
    stages = r["evaluate"]["stages"]
    timing = {t["stage"]: t for t in r["timing"]}
    enc = r["encoder_ms_batch256"]
    rows = []
    for name in ("first", "second", "third", "origin"):
        s, t = stages[name], timing.get(name, {})
        rows.append(
            [
                name,
                f"{s['accuracy_pct']:.2f} %",
                f"{STUDY_PCT[name]:.2f} %",
                f"{enc.get(name, 0.0):.3f}",
                f"{float(t.get('query_ms_mean') or 0):.2f}",
            ]
        )
    by_k = sorted(
        (x for x in r["by_k"] if x["stage"] == "third"), key=lambda x: (-float(x["accuracy_pct"]), x["k"], x["vote"])
    )
    best = by_k[0]
    one_nn = next(x for x in by_k if x["k"] == 1 and x["vote"] == "majority")
    third = float(stages["third"]["accuracy_pct"])
    second = float(stages["second"]["accuracy_pct"])
    first = float(stages["first"]["accuracy_pct"])
    lines = [
        f"Measured {r['machine']}, one run of `python -m bench.trained` on 50,000 training and 10,000 test CIFAR-10 JPEGs, fresh `CLIPVDB_HOME`, each command a subprocess."
    ]
    if "train" in r:
        t = r["train"]
        lines += [
            "",
            f"`clipvdb train --data cifar10`: **{r['train_s'] / 60:.1f} min** wall ({t['epochs']} epochs, "
            f"{t['images_per_s']:.0f} training images/s, final loss {t['final_loss']:.3f}, widths "
            f"{','.join(str(w) for w in t['widths'])}); goal <= 15 min: {_yes(r['train_s'] <= GOAL_TRAIN_S)}.",
        ]
    lines += [
        "",
        markdown.table(
            [
                "stage",
                "1-NN accuracy (origin: its classifier)",
                "the study (CLIP RN50)",
                "encoder ms/image, batch 256",
                "query ms/image",
            ],
            rows,
        ),
        "",
        f"- Goals: `third` 1-NN >= {GOAL_THIRD_PCT:.0f} %: {third:.2f} % {_yes(third >= GOAL_THIRD_PCT)}; "
        f"`second` between `first` and `third` ({first:.2f} < {second:.2f} < {third:.2f}): "
        f"{_yes(first < second < third)}; encoder at `third` under {GOAL_ENCODE_MS:.0f} ms per image: "
        f"{enc['third']:.3f} ms {_yes(enc['third'] < GOAL_ENCODE_MS)}.",
        f"- Best protocol at `third` from the same evaluate (`--k 1,5,20`, one search): k={best['k']} {best['vote']} "
        f"{float(best['accuracy_pct']):.2f} %, {float(best['accuracy_pct']) - float(one_nn['accuracy_pct']):+.2f} "
        "points over 1-NN.",
        f"- Commands: ingest --stage all {r['ingest_s']:.1f} s ({r['ingest']['images_per_s']:.0f} images/s); "
        f"evaluate --stage all --k 1,5,20 {r['evaluate_s']:.1f} s.",
        "",
        "Accuracy by k and vote (`report_accuracy_by_k`, one evaluate):",
        "",
        markdown.table(
            ["stage", "k", "majority", "weighted", "dino"],
            [
                [st, str(k)]
                + [
                    f"{float(next(x['accuracy_pct'] for x in r['by_k'] if x['stage'] == st and x['k'] == k and x['vote'] == v)):.2f}"
                    for v in ("majority", "weighted", "dino")
                ]
                for st in ("first", "second", "third")
                for k in (1, 5, 20)
            ],
        ),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
