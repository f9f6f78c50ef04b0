"""The scale data set (bench/scale_data.py) and the index defaults chosen from the stored size."""

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from bench.scale_data import make
from clipvdb import synthetic
from clipvdb.sources import open_source


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "scale.json"
    }


def test_the_scale_set_carries_labels_and_is_deterministic(tmp_path):
    src = synthetic.generate(tmp_path / "src", {"train": 6, "test": 2})
    info = make(src, tmp_path / "a", total=180, seed=7, workers=1)
    assert info["originals"] == 60 and info["copies_per_original"] == 2 and info["train_images"] == 180
    a = open_source(tmp_path / "a")
    items = a.items("train")
    assert len(items) == 180 and len(a.items("test")) == 20
    for it in items:  # every copy sits in (is labelled as) its source image's class
        _, cls, _, name = it.key.split("/")
        assert a.classes[it.label] == cls and (src / "train" / cls / (Path(name).stem + ".png")).is_file()
    assert all("/base/" in it.key for it in items[:60])  # --limit 60 takes the originals
    copy = Image.open(tmp_path / "a" / items[60].key)
    assert copy.size == (32, 32) and copy.format == "JPEG"
    base = np.asarray(Image.open(tmp_path / "a" / items[0].key).convert("RGB"), dtype=np.float32)
    assert np.abs(np.asarray(copy.convert("RGB"), dtype=np.float32) - base).mean() > 1.0  # changed
    make(src, tmp_path / "b", total=180, seed=7, workers=2)
    make(src, tmp_path / "c", total=180, seed=8, workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")
