"""Near duplicates and leaks: `clipvdb duplicates` finds the copies planted in a generated set (and
nothing else), stores them for report_duplicates and /duplicates, draws them, forgets the pairs of
deleted images; `evaluate --exclude-leaks` reports the accuracy without the leaked test images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from clipvdb import Store, TinyEncoder

LEAKS = 5  # test images planted in train: 3 byte-identical files, 2 with a little noise
TRAIN_COPIES = 2  # training images stored twice under other names


@pytest.fixture
def planted(syn_data, tmp_path, monkeypatch):
    """The generated set with LEAKS test images copied into train (under the same class) and
    TRAIN_COPIES training images copied within train; returns (root, leaked test keys)."""
    root = tmp_path / "data"
    shutil.copytree(syn_data, root)
    monkeypatch.chdir(tmp_path)
    tests = sorted((root / "test").rglob("*.png"))[:: len(sorted((root / "test").rglob("*.png"))) // LEAKS][:LEAKS]
    rng = np.random.default_rng(3)
    for n, path in enumerate(tests):
        target = root / "train" / path.parent.name / f"leak{n}.png"
        if n < 3:
            shutil.copyfile(path, target)
        else:
            a = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
            Image.fromarray(np.clip(a + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)).save(target)
    for n, path in enumerate(sorted((root / "train").rglob("0000.png"))[:TRAIN_COPIES]):
        shutil.copyfile(path, path.with_name(f"again{n}.png"))
    return root, {str(p.relative_to(root)) for p in tests}


def test_across_finds_the_planted_leaks_and_nothing_else(cli, db_url, planted, tmp_path):
    root, leaked = planted
    cli("ingest", "--stage", "first", "--data", "data")
    cli("ingest", "--stage", "first", "--data", "data", "--split", "test")
    out = tmp_path / "leaks.png"
    default = json.loads(cli("duplicates", "--stage", "first", "--across", "--json").stdout)
    assert leaked <= {p["source"] for p in default["pairs"]}
    # a stricter ratio than the default: the planted copies (0 and about 0.4 away) and nothing else
    found = json.loads(
        cli("duplicates", "--stage", "first", "--across", "--ratio", "0.5", "--out", out, "--json").stdout
    )
    assert found["test_images_with_train_duplicate"] == LEAKS
    assert {p["source"] for p in found["pairs"]} == leaked
    assert all(p["other_source"].startswith("train/") and "leak" in p["other_source"] for p in found["pairs"])
    assert found["counts"] == {"test-train": LEAKS} and found["different_label"] == 0
    assert "x the distance to the next farther image" in found["threshold_rule"]
    assert Image.open(out).size == (4 * (2 * 96 + 8), 2 * (96 + 60))  # 5 pairs, 4 a row

    line = cli("duplicates", "--stage", "first", "--across", "--ratio", "0.5").output.splitlines()[0]
    assert f"{LEAKS} of 20 test images with a training near-duplicate" in line

    within = json.loads(cli("duplicates", "--stage", "first", "--within", "train", "--ratio", "0.5", "--json").stdout)
    assert within["test_images_with_train_duplicate"] is None
    assert len(within["pairs"]) == TRAIN_COPIES  # each copied pair once, not a->b and b->a
    assert all(p["distance"] == 0 and p["same_label"] for p in within["pairs"])

    with Store(db_url, encoder=TinyEncoder()) as store:
        scans, pairs = store.duplicate_pairs()
        assert sorted((s["split"], s["other_split"], s["pairs"]) for s in scans) == [
            ("test", "train", LEAKS),
            ("train", "train", TRAIN_COPIES),
        ]
        from clipvdb.web import create_app

        page = create_app(store).test_client().get("/duplicates").get_data(as_text=True)
        assert page.count('alt="image ') == 2 * (LEAKS + TRAIN_COPIES)

        # a deleted image takes its pairs with it: from the table, not only from the view's join
        store.delete(paths=["data/train/*/leak0.png"])
        scans, _ = store.duplicate_pairs()
        assert {(s["split"], s["pairs"]) for s in scans} == {("test", LEAKS - 1), ("train", TRAIN_COPIES)}
        with store.connection() as conn:
            assert conn.execute("SELECT count(*) FROM duplicate_pairs").fetchone()[0] == LEAKS - 1 + TRAIN_COPIES

    out = cli("duplicates", "--stage", "first", "--across", "--threshold", "-1", expect=2).output
    assert "--threshold must be at least 0" in out
    out = cli("duplicates", "--stage", "first", expect=2).output
    assert "choose one: --within SPLIT" in out


def test_evaluate_exclude_leaks_reports_the_accuracy_without_them(cli, planted):
    cli("ingest", "--stage", "first", "--data", "data")
    cli("ingest", "--stage", "first", "--data", "data", "--split", "test")
    before = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--exclude-leaks", "--json").stdout)
    assert before["without_leaks"]["leaked"] == 0
    cli("duplicates", "--stage", "first", "--across", "--ratio", "0.5")
    run = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--exclude-leaks", "--json").stdout)
    every, without = run["stages"]["first"], run["without_leaks"]["stages"]["first"]
    assert run["without_leaks"]["leaked"] == LEAKS
    # each leak is answered by its own copy in train, of its own class: right, every one
    assert (without["n"], without["correct"]) == (every["n"] - LEAKS, every["correct"] - LEAKS)
    table = cli("evaluate", "--stage", "first", "--data", "data", "--exclude-leaks").output
    assert "accuracy_without_leaks" in table
