"""A scale data set anyone can make: CIFAR-10's training images and augmented copies, as image files.

    python -m bench.scale_data --data .cache/data/cifar10 --out .cache/data/cifar10-1m --total 1000000

Writes an image-folder tree that `clipvdb ingest` reads like any other:

    OUT/train/<class>/base/<file>        the originals (hard links where the file system allows)
    OUT/train/<class>/copyNN/<file>.jpg  augmented copy NN of each original, labelled as its source
    OUT/test/<class>/<file>              the original test images (the queries), untouched

A copy is the original flipped horizontally (half of them), shifted by up to 4 pixels each way
(reflect padding) and jittered in brightness, contrast and saturation (up to 10 % each), saved as
JPEG at quality 90. Everything is decided by a generator seeded from (seed, copy, image), so the
same arguments give the same files. Folder names sort `base` before `copy01`: `clipvdb ingest
--limit 50000` takes the originals, `--limit 200000` the originals and three copies of each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from clipvdb.sources import open_source

SHIFT = 4
JITTER = 0.10
QUALITY = 90


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = np.asarray(img.convert("RGB"))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    h, w = arr.shape[:2]
    padded = np.pad(arr, ((SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)), mode="reflect")
    dy, dx = rng.integers(0, 2 * SHIFT + 1, size=2)
    out = Image.fromarray(np.ascontiguousarray(padded[dy : dy + h, dx : dx + w]))
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(1.0 + rng.uniform(-JITTER, JITTER))
    return out


_job: tuple | None = None  # (paths, out, seed, copies): inherited by forked workers


def _write_copies(span: tuple[int, int]) -> int:
    assert _job is not None
    paths, rel, out, seed, copies = _job
    written = 0
    for i in range(*span):
        with Image.open(paths[i]) as src:
            img = src.convert("RGB")
        for c in range(1, copies + 1):
            rng = np.random.default_rng([seed, c, i])
            dest = out / "train" / rel[i][0] / f"copy{c:02d}" / (Path(rel[i][1]).stem + ".jpg")
            augment(img, rng).save(dest, quality=QUALITY)
            written += 1
    return written


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another file system: a copy
        shutil.copyfile(src, dest)


def make(data: Path, out: Path, total: int, seed: int = 0, workers: int | None = None) -> dict:
    """Write the tree (nothing when a finished one with the same arguments is there); returns its
    description (also written to OUT/scale.json)."""
    marker = out / "scale.json"
    params = {"data": str(data.resolve()), "total": total, "seed": seed, "shift": SHIFT, "jitter": JITTER}
    if marker.exists() and json.loads(marker.read_text()).get("params") == params:
        return json.loads(marker.read_text())
    source = open_source(data)
    train = source.items("train")
    copies = max(0, -(-total // len(train)) - 1)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    rel = []
    for it in train:
        assert it.path is not None
        cls = source.classes[it.label]
        path = Path(it.path)
        _link(path, out / "train" / cls / "base" / path.name)
        rel.append((cls, path.name))
        for c in range(1, copies + 1):
            (out / "train" / cls / f"copy{c:02d}").mkdir(parents=True, exist_ok=True)
    for it in source.items("test"):
        assert it.path is not None
        path = Path(it.path)
        _link(path, out / "test" / source.classes[it.label] / path.name)
    global _job
    _job = ([it.path for it in train], rel, out, seed, copies)
    chunk = 500
    spans = [(s, min(s + chunk, len(train))) for s in range(0, len(train), chunk)]
    written = 0
    try:
        with multiprocessing.get_context("fork").Pool(workers or os.cpu_count() or 1) as pool:
            for n in pool.imap_unordered(_write_copies, spans):
                written += n
    finally:
        _job = None
    info = {
        "params": params,
        "originals": len(train),
        "copies_per_original": copies,
        "train_images": len(train) * (copies + 1),
        "test_images": len(source.items("test")),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    marker.write_text(json.dumps(info, indent=2))
    return info


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="an image-folder CIFAR-10 copy (train/ and test/)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--total", type=int, default=1_000_000, help="training images in all (originals included)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int)
    args = ap.parse_args(argv)
    info = make(args.data, args.out, args.total, args.seed, args.workers)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
