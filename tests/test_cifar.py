"""The CIFAR-10 python-version reader, and exact stage-first search against numpy brute force."""

import json

import numpy as np
import pytest
from archives import write_cifar_archive

from clipvdb.errors import SourceError
from clipvdb.sources import open_source

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    """A small archive in the official format: 60 train and 12 test images, class-correlated pixels."""
    rng = np.random.default_rng(3)

    def split(n):
        labels = rng.integers(0, 10, n)
        base = (labels[:, None] * 25 + rng.normal(0, 40, (n, 3072))).clip(0, 255).astype(np.uint8)
        return {"data": base, "labels": [int(x) for x in labels]}

    train, test = split(60), split(12)
    path = write_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz", train, test, CLASSES)
    return path, train, test


def test_reader_archive_and_folder(cifar, tmp_path):
    path, train, test = cifar
    src = open_source(path)
    assert src.classes == CLASSES and src.name == "cifar10"
    items = src.items("train")
    assert len(items) == 60 and len(src.items("test")) == 12
    assert items[0].key == "data_batch_1/00000" and items[0].label == train["labels"][0]
    np.testing.assert_array_equal(items[5].array, train["data"][5].reshape(3, 32, 32).transpose(1, 2, 0))
    import tarfile

    with tarfile.open(path) as tar:
        tar.extractall(tmp_path, filter="data")
    for form in (tmp_path, tmp_path / "cifar-10-batches-py"):
        folder = open_source(form)
        assert [i.key for i in folder.items("test")] == [i.key for i in src.items("test")]
    with pytest.raises(SourceError, match="splits train and test"):
        src.items("validation")


def test_unknown_sources_name_the_formats(tmp_path):
    with pytest.raises(SourceError, match="cifar-10-batches-py"):
        open_source(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="not a CIFAR-10 archive"):
        open_source(tmp_path / "notes.txt")


def test_cifar10_word_offline_fails_with_one_line(tmp_path, monkeypatch):
    import clipvdb.sources as sources

    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    with pytest.raises(SourceError, match="cannot download CIFAR-10.*--data"):
        open_source("cifar10", cache_dir=tmp_path)


def test_exact_first_stage_equals_numpy_brute_force(cli, cifar):
    path, train, test = cifar
    cli("ingest", "--stage", "first", "--data", path, "--workers", "0")
    out = json.loads(cli("evaluate", "--stage", "first", "--data", path, "--exact", "--json", "--workers", "0").stdout)
    X = train["data"].astype(np.float64) / 255.0
    Q = test["data"].astype(np.float64) / 255.0
    d2 = (Q**2).sum(1)[:, None] + (X**2).sum(1)[None, :] - 2 * Q @ X.T
    nearest = d2.argmin(1)
    expected = sum(int(train["labels"][j] == test["labels"][i]) for i, j in enumerate(nearest))
    assert out["stages"]["first"]["correct"] == expected
    # and image by image, through classify --exact on the CIFAR arrays written as PNGs
    from PIL import Image

    for i in range(3):
        img = test["data"][i].reshape(3, 32, 32).transpose(1, 2, 0)
        p = path.parent / f"q{i}.png"
        Image.fromarray(img).save(p)
        pred = json.loads(cli("classify", p, "--stage", "first", "--exact", "--json").stdout)[0]
        assert pred["neighbors"][0]["source"] == f"data_batch_1/{nearest[i]:05d}"
        assert pred["distance"] == pytest.approx(np.sqrt(d2[i, nearest[i]]), rel=1e-4)
