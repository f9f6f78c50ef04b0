"""A scale data set anyone can make: CIFAR-10's training images and augmented copies, as image files.

    python -m bench.scale_data --data .cache/data/cifar10 --out .cache/data/cifar10-1m --total 1000000
    python -m bench.scale_data --data .cache/data/cifar10 --out .cache/data/cifar10-1m-copies --kind copies

Writes an image-folder tree that `clipvdb ingest` reads like any other:

    OUT/train/<class>/base/<file>        the originals (hard links where the file system allows)
    OUT/train/<class>/copyNN/<file>.jpg  copy NN of each original, labelled as its source
    OUT/test/<class>/<file>              the original test images (the queries), untouched

Two kinds of copies:

- `distinct` (the default): every copy is the original flipped horizontally (half of them), shifted
  by up to 4 pixels each way (reflect padding) and jittered in brightness, contrast and saturation
  (up to 10 % each), saved as JPEG at quality 90: no two stored images are the same.
- `copies`: a stored set full of duplicates. Copies 01-07 are one file, the original flipped and
  saved as JPEG at quality 90, written seven times byte for byte (the same SHA-256, the same
  vector); copies 08 on are near copies, the original or its flip (half each) either shifted by 1-4
  pixels (even copy numbers) or recoloured as above (odd ones). At 200,000 rows that is each image,
  its flip and two more identical files of the flip; at 1,000,000 each image with 19 copies, seven
  of them one identical flip.

Everything is decided by a generator seeded from (seed, copy, image), so the same arguments give
the same files. Folder names sort `base` before `copy01`: `clipvdb ingest --limit 50000` takes the
originals, `--limit 200000` the originals and three copies of each.
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
KINDS = ("distinct", "copies")
IDENTICAL = 7  # the copies kind: copies 01-07 are one flip of the original, byte-identical files


def _shift(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Shifted by (dy - SHIFT, dx - SHIFT) pixels, the border filled by reflection."""
    h, w = arr.shape[:2]
    padded = np.pad(arr, ((SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)), mode="reflect")
    return np.ascontiguousarray(padded[dy : dy + h, dx : dx + w])


def _recolour(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(1.0 + rng.uniform(-JITTER, JITTER))
    return img


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A distinct copy: flipped (half of them), shifted and recoloured."""
    arr = np.asarray(img.convert("RGB"))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    dy, dx = rng.integers(0, 2 * SHIFT + 1, size=2)
    return _recolour(Image.fromarray(_shift(arr, int(dy), int(dx))), rng)


def near_copy(img: Image.Image, rng: np.random.Generator, copy: int) -> Image.Image:
    """A near copy of the copies kind: the original or its flip, shifted (even `copy`) or
    recoloured (odd `copy`)."""
    arr = np.asarray(img.convert("RGB"))
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    if copy % 2:
        return _recolour(Image.fromarray(np.ascontiguousarray(arr)), rng)
    offsets = [(dy, dx) for dy in range(2 * SHIFT + 1) for dx in range(2 * SHIFT + 1) if (dy, dx) != (SHIFT, SHIFT)]
    dy, dx = offsets[int(rng.integers(len(offsets)))]
    return Image.fromarray(_shift(arr, dy, dx))


_job: tuple | None = None  # (paths, rel, out, seed, copies, kind): inherited by forked workers


def _write_copies(span: tuple[int, int]) -> int:
    assert _job is not None
    paths, rel, out, seed, copies, kind = _job
    written = 0
    for i in range(*span):
        with Image.open(paths[i]) as src:
            img = src.convert("RGB")
        first = None  # the copies kind: the identical flip's file, once written
        for c in range(1, copies + 1):
            rng = np.random.default_rng([seed, c, i])
            dest = out / "train" / rel[i][0] / f"copy{c:02d}" / (Path(rel[i][1]).stem + ".jpg")
            if kind == "distinct":
                augment(img, rng).save(dest, quality=QUALITY)
            elif c <= IDENTICAL:
                if first is None:
                    img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(dest, quality=QUALITY)
                    first = dest
                else:  # a file of its own with the same bytes (a hard link would be the same file)
                    shutil.copyfile(first, dest)
            else:
                near_copy(img, rng, c).save(dest, quality=QUALITY)
            written += 1
    return written


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dest)
    except OSError:  # another file system: a copy
        shutil.copyfile(src, dest)


def make(data: Path, out: Path, total: int, seed: int = 0, workers: int | None = None, kind: str = "distinct") -> dict:
    """Write the tree (nothing when a finished one with the same arguments is there); returns its
    description (also written to OUT/scale.json)."""
    if kind not in KINDS:
        raise SystemExit(f"unknown kind of copies {kind!r}; choose from {', '.join(KINDS)}")
    marker = out / "scale.json"
    params = {"data": str(data.resolve()), "total": total, "seed": seed, "shift": SHIFT, "jitter": JITTER}
    if kind != "distinct":  # the distinct tree's marker stays as it was: a tree made before is reused
        params.update(kind=kind, identical=IDENTICAL)
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
    _job = ([it.path for it in train], rel, out, seed, copies, kind)
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
        "kind": kind,
        "originals": len(train),
        "copies_per_original": copies,
        "identical_per_original": min(copies, IDENTICAL) if kind == "copies" else 0,
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
    ap.add_argument("--kind", choices=KINDS, default="distinct", help="distinct copies, or copies with duplicates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int)
    args = ap.parse_args(argv)
    info = make(args.data, args.out, args.total, args.seed, args.workers, args.kind)
    print(json.dumps(info, indent=2))
    return info


if __name__ == "__main__":
    main()
