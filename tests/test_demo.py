"""The demo offline: synthetic data and the shipped CNN in place of CLIP, announced loudly, never
presented as CLIP; what it stores and predicts is that CNN's nearest neighbors."""

from pathlib import Path

import numpy as np
import psycopg
from conftest import exact_ids
from PIL import Image

from clipvdb.demo import SHIPPED_MODEL
from clipvdb.stages import parse_stages
from clipvdb.trained_model import TrainedEncoder, file_sha256


def test_demo_falls_back_and_says_so(cli, db_url, monkeypatch, tmp_path):
    import clipvdb.sources as sources

    monkeypatch.setenv("CLIPVDB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sources, "CIFAR10_URL", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    r = cli("demo", "--train", "20", "--test", "10", "--stage", "all", "--out", tmp_path / "out")
    out = r.output
    assert "NO REAL DATA" in out and "SYNTHETIC" in out
    assert "NO CLIP WEIGHTS" in out and "clipvdb's own CNN" in out and "NOT from CLIP" in out
    enc = TrainedEncoder(SHIPPED_MODEL)
    record = enc.checkpoint.record  # the notice names the file's own training
    assert f"{record['epochs']} epochs, seed {record['seed']}" in out
    assert "stage origin skipped" in out  # the CNN's classifier knows CIFAR-10's classes, not the shapes
    with psycopg.connect(db_url) as conn:
        spaces = conn.execute("SELECT stage, model, weights FROM embedding_spaces WHERE stage <> 'first'").fetchall()
        stored = conn.execute("SELECT source, label FROM images WHERE split = 'train' ORDER BY source").fetchall()
        predicted = conn.execute(
            "SELECT p.stage, i.source, p.predicted FROM predictions p JOIN images i ON i.id = p.image_id"
        ).fetchall()
    # the vectors are the shipped CNN's (its file's SHA-256), not CLIP's, and origin ran nowhere
    cnn = f"sha256:{file_sha256(SHIPPED_MODEL)}"
    assert sorted(spaces) == [("second", "cnn", cnn), ("third", "cnn", cnn)]
    assert len(stored) == 20 and len(predicted) == 3 * 10
    assert {stage for stage, _, _ in predicted} == {"first", "second", "third"}
    # each prediction is the label of the nearest training image, found here by numpy over the
    # synthetic files the demo generated, encoded in this process
    root = tmp_path / "home" / "cache" / "synthetic"
    tested = sorted({source for _, source, _ in predicted})
    assert len(tested) == 10 and all(s.startswith("test/") for s in tested)

    def pixels(sources: list[str]) -> np.ndarray:
        return np.stack([np.asarray(Image.open(root / s).convert("RGB")) for s in sources])

    train_x, test_x = pixels([s for s, _ in stored]), pixels(tested)
    labels = np.array([label for _, label in stored])
    vectors = {
        "first": [x.reshape(len(x), -1).astype(np.float64) / 255 for x in (train_x, test_x)],
        **{
            s: [enc.encode(x, parse_stages(s)).vectors[s].astype(np.float64) for x in (train_x, test_x)]
            for s in ("second", "third")
        },
    }
    for stage, (a, b) in vectors.items():
        got = {source: p for st, source, p in predicted if st == stage}
        assert [got[s] for s in tested] == exact_ids(a, b, labels.tolist()), stage
    pngs = sorted(Path(tmp_path / "out").glob("*.png"))
    assert len(pngs) == 4  # accuracy and time, and a distance histogram per kNN stage (first, second, third)
    for p in pngs:
        Image.open(p).verify()
