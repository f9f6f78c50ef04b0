"""The demo offline: synthetic data and the shipped CNN in place of CLIP, announced loudly, never
presented as CLIP, with ImageNet EfficientNet-Lite0 beside it (its wheel is a test dependency); what
it stores and predicts is each model's nearest neighbors."""

from pathlib import Path

import numpy as np
import psycopg
from conftest import exact_ids
from PIL import Image

from clipvdb.demo import BESIDE_MODEL, SHIPPED_MODEL
from clipvdb.encoder import load_encoder
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
    lite = load_encoder(BESIDE_MODEL, "")
    assert f"ALSO: {BESIDE_MODEL}, ImageNet EfficientNet-Lite0" in out and f"say model {BESIDE_MODEL}" in out
    with psycopg.connect(db_url) as conn:
        spaces = conn.execute("SELECT stage, model, weights FROM embedding_spaces WHERE stage <> 'first'").fetchall()
        stored = conn.execute("SELECT source, label FROM images WHERE split = 'train' ORDER BY source").fetchall()
        predicted, beside = (
            conn.execute(
                """SELECT p.stage, i.source, p.predicted FROM predictions p JOIN images i ON i.id = p.image_id
                   JOIN eval_runs r ON r.id = p.run_id WHERE r.model = %s""",
                (model,),
            ).fetchall()
            for model in ("cnn", BESIDE_MODEL)
        )
    # the vectors are the shipped CNN's (its file's SHA-256), not CLIP's, and its origin ran nowhere;
    # EfficientNet-Lite0's at every stage it has, origin included (classified by neighbors)
    cnn = f"sha256:{file_sha256(SHIPPED_MODEL)}"
    lite_spaces = [(stage, BESIDE_MODEL, lite.weights) for stage in ("origin", "second", "third")]
    assert sorted(spaces) == sorted([("second", "cnn", cnn), ("third", "cnn", cnn), *lite_spaces])
    assert len(stored) == 20 and len(predicted) == len(beside) == 3 * 10
    assert {stage for stage, _, _ in predicted} == {"first", "second", "third"}
    assert {stage for stage, _, _ in beside} == {"second", "third", "origin"}
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
    lite_stages = parse_stages("second,third,origin")
    # EfficientNet-Lite0 reads each image resized to its input size (its own prepare)
    lite_x = [
        np.stack([lite.prepare(Image.open(root / s)) for s in sources]) for sources in ([s for s, _ in stored], tested)
    ]
    lite_vectors = {
        s: [lite.encode(x, lite_stages).vectors[s].astype(np.float64) for x in lite_x]
        for s in ("second", "third", "origin")
    }
    for rows, by_stage in ((predicted, vectors), (beside, lite_vectors)):
        for stage, (a, b) in by_stage.items():
            got = {source: p for st, source, p in rows if st == stage}
            assert [got[s] for s in tested] == exact_ids(a, b, labels.tolist()), stage
    pngs = sorted(Path(tmp_path / "out").glob("*.png"))
    # per run accuracy and time, and a distance histogram per kNN stage (first, second, third; and
    # second, third, origin), and one trade-off chart of both runs
    assert len(pngs) == 4 + 4 + 1 and sum(p.name.endswith("_tradeoff.png") for p in pngs) == 1
    for p in pngs:
        Image.open(p).verify()
