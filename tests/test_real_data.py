"""Optional end to end on the real CIFAR-10 copy in ../shared/data (skipped when it is absent)."""

import json
from pathlib import Path

import numpy as np

from clipvdb import SearchSettings
from clipvdb.images import first_stage_pixels, first_stage_vectors, load_image
from clipvdb.sources import open_source

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_stage_first_on_real_cifar10_matches_numpy(cli, cifar_jpeg):
    src = open_source(cifar_jpeg)
    assert src.classes[:3] == ["airplane", "automobile", "bird"]
    cli("ingest", "--stage", "first", "--data", cifar_jpeg, "--limit", "1000")
    out = json.loads(
        cli("evaluate", "--stage", "first", "--data", cifar_jpeg, "--limit", "100", "--exact", "--json").stdout
    )

    def pixels(items):
        return first_stage_vectors(np.stack([first_stage_pixels(load_image(it.path)) for it in items]))

    train, test = src.items("train")[:1000], src.items("test")[:100]
    X, Q = pixels(train).astype(np.float64), pixels(test).astype(np.float64)
    d2 = (Q**2).sum(1)[:, None] + (X**2).sum(1)[None, :] - 2 * Q @ X.T
    nearest = d2.argmin(1)
    expected = sum(int(train[j].label == test[i].label) for i, j in enumerate(nearest))
    assert out["stages"]["first"]["correct"] == expected
    assert 0.15 < expected / 100 < 0.45  # raw-pixel 1-NN on CIFAR-10 lands near the study's 35 %


def test_sample_pngs_are_rgba_and_classify(cli, cifar_jpeg):
    samples = sorted((SHARED / "samples").glob("*.png"))
    assert len(samples) == 10
    cli("ingest", "--stage", "first", "--data", cifar_jpeg, "--limit", "500")
    preds = json.loads(cli("classify", *samples, "--stage", "first", "--exact", "--json").stdout)
    src = open_source(cifar_jpeg)
    train = src.items("train")[:500]
    X = first_stage_vectors(np.stack([first_stage_pixels(load_image(it.path)) for it in train]))
    X = X.astype(np.float16).astype(np.float64)  # stored as halfvec
    Q = first_stage_vectors(np.stack([first_stage_pixels(load_image(p)) for p in samples])).astype(np.float64)
    nearest = ((Q[:, None, :] - X[None, :, :]) ** 2).sum(-1).argmin(1)
    assert [p["predicted_class"] for p in preds] == [src.classes[train[j].label] for j in nearest]
    assert [p["neighbors"][0]["source"] for p in preds] == [train[j].key for j in nearest]


def test_citus_cluster_on_real_cifar10_matches_numpy(citus_home, cifar_jpeg):
    """On a coordinator + 2 workers: an exact evaluate on a real CIFAR-10 subset equals a brute
    force over the same images; the default path stays within one point of it."""
    from clipvdb import Store

    src = open_source(cifar_jpeg)
    with Store(home=citus_home) as store:
        store.ingest(cifar_jpeg, stages="first", split="train", limit=3000)
        exact = store.evaluate(cifar_jpeg, stage="first", settings=SearchSettings(exact=True), limit=300)
        default = store.evaluate(cifar_jpeg, stage="first", limit=300)

    def pixels(items):
        return first_stage_vectors(np.stack([first_stage_pixels(load_image(it.path)) for it in items]))

    train, test = src.items("train")[:3000], src.items("test")[:300]
    X, Q = pixels(train).astype(np.float64), pixels(test).astype(np.float64)
    nearest = ((Q**2).sum(1)[:, None] + (X**2).sum(1)[None, :] - 2 * Q @ X.T).argmin(1)
    expected = sum(int(train[j].label == test[i].label) for i, j in enumerate(nearest))
    assert exact.stages["first"].correct == expected
    assert abs(default.stages["first"].correct - expected) <= 3  # one point of 300
