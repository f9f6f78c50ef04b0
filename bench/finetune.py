"""Fine-tuning EfficientNet-Lite0 on the training split: per stage, the ImageNet network against the tuned one.

    python -m bench.finetune --data .cache/data/cifar10 [--size 160] [--epochs 1] [--train 50000] --write

One fresh CLIPVDB_HOME holds both models. `clipvdb ingest` and `clipvdb evaluate --k 1,5,10,20` of
efficientnet-lite0@SIZE (stages second, third, origin: its first `--train` training images stored,
its first `--test` test images queried); then `clipvdb train --base efficientnet-lite0@SIZE
--epochs E` on the same training images (nothing of the test split); then the same ingest and
evaluate of the checkpoint it wrote. Each command a subprocess timed from outside. Rows as
bench.models: accuracy at k 1 and the best (k, vote) of report_accuracy_by_k, encoder and query ms
per image (report_timing), bytes per row.
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
from bench.common import CLI
from bench.models import HEADER, measure, table_row, tune

STAGES = "second,third,origin"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--size", type=int, default=160, help="input size, pixels a side")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the fine-tuning")
    ap.add_argument("--train", type=int, default=50_000, help="training images: stored, and trained on")
    ap.add_argument("--test", type=int, default=10_000, help="test images queried")
    ap.add_argument("--out", type=Path, default=Path("bench-out/finetune.json"))
    ap.add_argument("--write", action="store_true", help="rewrite the finetune block of BENCHMARKS.md")
    args = ap.parse_args(argv)
    base = f"efficientnet-lite0@{args.size}"
    home = Path(tempfile.mkdtemp(prefix="clipvdb-finetune-"))
    env = {k: v for k, v in os.environ.items() if k != "CLIPVDB_DATABASE_URL"}
    env.update(PYTHONUNBUFFERED="1", CLIPVDB_HOME=str(home))
    result: dict = {"train": args.train, "test": args.test, "size": args.size, "epochs": args.epochs, "base": base}
    try:
        result["rows"] = measure(home, env, args.data, (base, base, None, STAGES, False), args.train, args.test)
        name = f"{base} fine-tuned"
        result["training"] = tune(home, env, args.data, name, base, args.epochs, args.train)
        tuned = (name, result["training"]["checkpoint"], None, STAGES, False)
        result["rows"] += measure(home, env, args.data, tuned, args.train, args.test)
    finally:
        subprocess.run(CLI + ["db", "stop"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)
    result["machine"] = markdown.machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(render(result))
    if args.write:
        markdown.write("finetune", render(result), ["BENCHMARKS.md"])
    return result


def render(r: dict) -> str:
    t = r["training"]
    base = {x["stage"]: x for x in r["rows"] if x["model"] == r["base"]}
    gains = ", ".join(
        f"{x['stage']} {base[x['stage']]['best']['accuracy']:.2f} -> {x['best']['accuracy']:.2f} %"
        for x in r["rows"]
        if x["model"] != r["base"]
    )
    return (
        "\n".join(
            [
                f"Measured {r['machine']}, one run of `python -m bench.finetune --size {r['size']} --epochs "
                f"{r['epochs']} --train {r['train']} --test {r['test']}`: one fresh database; CIFAR-10's first "
                f"{r['train']:,} training images stored per model and trained on, its first {r['test']:,} test images "
                "queried; each command a subprocess.",
                "",
                f"`clipvdb train --base {r['base']} --epochs {r['epochs']}`: {t['images']:,} images, {t['steps']:,} steps "
                f"in {t['train_seconds']:.0f} s ({t['images_per_s']:.0f} images/s; the command {t['command_s']:.0f} s), "
                f"its last two block stages and head trained; training accuracy {t['train_accuracy']:.1%}.",
                "",
                markdown.table(HEADER, [table_row(x) for x in r["rows"]]),
                "",
                f"Best (k, vote), ImageNet network -> fine-tuned: {gains}.",
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
