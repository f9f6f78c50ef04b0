"""`clipvdb train`: a compact CNN fitted on one split, and its checkpoint used as a model like RN50."""

import json
import os
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch

from clipvdb import TrainOptions, synthetic
from clipvdb.encoder import load_encoder
from clipvdb.errors import SourceError, UsageError, WeightsError
from clipvdb.sources import open_source
from clipvdb.stages import parse_stages
from clipvdb.trained_model import TrainedEncoder, file_sha256, read_checkpoint
from clipvdb.training import load_split, train


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """300 training and 100 test images of the synthetic shapes, and a test split that cannot be
    decoded at all: training must never read it."""
    root = synthetic.generate(tmp_path_factory.mktemp("shapes") / "shapes", {"train": 30, "test": 10})
    poisoned = root / "test" / synthetic.CLASSES[0] / "not-an-image.png"
    poisoned.write_bytes(b"this is not a PNG")
    return root


@pytest.fixture(scope="module")
def checkpoint(shapes, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("ckpt") / "shapes.pt"
    result = train(
        open_source(shapes),
        out,
        TrainOptions(name="shapes-cnn", widths=(8, 16, 24), epochs=10, batch_size=64, workers=0),
    )
    return out, result


def test_training_lowers_the_loss_and_writes_a_checkpoint_that_round_trips(checkpoint, shapes):
    path, result = checkpoint
    assert result.epochs == 10 and result.images == 300 and result.skipped == 0
    assert result.loss_per_epoch[-1] < 0.8 * result.loss_per_epoch[0]
    ckpt = read_checkpoint(path)
    assert ckpt.widths == (8, 16, 24) and ckpt.classes == open_source(shapes).classes and ckpt.name == "shapes-cnn"
    assert ckpt.record["split"] == "train" and ckpt.record["images"] == 300
    # the identity is the file's SHA-256, the same on every load
    enc_a, enc_b = TrainedEncoder(path), TrainedEncoder(path)
    assert enc_a.weights == enc_b.weights == f"sha256:{file_sha256(path)}" == f"sha256:{result.sha256}"
    # the loaded network answers as the one trained: its classifier beats chance on held-out images
    pixels, labels, skipped = load_split(open_source(shapes), "test", workers=0)
    assert skipped == 1  # the poisoned file, which training never touched
    logits = enc_a.encode(pixels, parse_stages("origin")).vectors["origin"]
    assert (logits.argmax(1) == labels).mean() > 0.3


def test_training_reads_the_named_split_only(shapes, tmp_path):
    """The test split holds a file that cannot be decoded; a training on it would skip one image."""
    result = train(
        open_source(shapes), tmp_path / "a.pt", TrainOptions(epochs=1, widths=(4, 4, 4), batch_size=100, workers=0)
    )
    assert result.skipped == 0 and result.images == 300
    with pytest.raises(SourceError, match="no 'validation' split"):
        train(open_source(shapes), tmp_path / "b.pt", TrainOptions(split="validation", epochs=1, workers=0))


@pytest.mark.parametrize("steps", [2, 4])
def test_a_run_of_a_handful_of_steps_trains(shapes, tmp_path, steps):
    """Whatever the step count: a warm-up of exactly one step (4 steps at 1/4) once divided by zero."""
    options = TrainOptions(epochs=1, widths=(4, 4, 4), batch_size=300 // steps, workers=0)
    result = train(open_source(shapes), tmp_path / "a.pt", options)
    assert result.steps == steps and (tmp_path / "a.pt").is_file()


def test_same_seed_same_weights(shapes, tmp_path):
    a = train(
        open_source(shapes),
        tmp_path / "a.pt",
        TrainOptions(epochs=2, widths=(4, 8, 8), batch_size=64, seed=3, workers=0),
    )
    b = train(
        open_source(shapes),
        tmp_path / "b.pt",
        TrainOptions(epochs=2, widths=(4, 8, 8), batch_size=64, seed=3, workers=0),
    )
    c = train(
        open_source(shapes),
        tmp_path / "c.pt",
        TrainOptions(epochs=2, widths=(4, 8, 8), batch_size=64, seed=4, workers=0),
    )
    wa, wb, wc = (read_checkpoint(Path(r.path)).state_dict for r in (a, b, c))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(wa[k].float(), wc[k].float()) for k in wa if wa[k].is_floating_point())


def test_the_time_budget_picks_the_epochs_and_leaves_no_trace(shapes, tmp_path):
    """The budget's timing probe trains on a copy it throws away: the run it sized equals a run given
    those epochs, so a checkpoint made under a budget is reproduced with --epochs (docs/models.md)."""
    kw = {"widths": (4, 4, 4), "batch_size": 50, "workers": 0, "seed": 5}
    short = train(open_source(shapes), tmp_path / "s.pt", TrainOptions(minutes=0.2, **kw))
    assert short.seconds < 0.2 * 60 + 10
    fixed = train(open_source(shapes), tmp_path / "f.pt", TrainOptions(epochs=short.epochs, **kw))
    a, b = read_checkpoint(tmp_path / "s.pt"), read_checkpoint(tmp_path / "f.pt")
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], rtol=1e-4, atol=1e-5)
    assert short.loss_per_epoch == pytest.approx(fixed.loss_per_epoch, rel=1e-4)
    assert a.record["budget_minutes"] == 0.2 and b.record["budget_minutes"] is None


def test_stages_stop_early_and_one_pass_equals_a_pass_per_stage(checkpoint):
    path, _ = checkpoint
    enc = TrainedEncoder(path)
    assert {n: s.dim for n, s in enc.stages.items()} == {"first": 3072, "second": 16, "third": 24, "origin": 10}
    batch = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    together = enc.encode(batch, parse_stages("all"))
    for name in ("second", "third", "origin"):
        alone = enc.encode(batch, parse_stages(name))
        np.testing.assert_array_equal(alone.vectors[name], together.vectors[name])
    with torch.inference_mode():
        logits = enc.net(enc.to_input(batch)).numpy()
    np.testing.assert_allclose(together.vectors["origin"], logits, rtol=1e-5, atol=1e-6)
    ran: list[str] = []
    modules = {"block1": enc.net.blocks[0], "block2": enc.net.blocks[1], "block3": enc.net.blocks[2]}
    modules["head"] = enc.net.head
    hooks = [m.register_forward_hook(lambda *_, n=n: ran.append(n)) for n, m in modules.items()]
    try:
        enc.encode(batch, parse_stages("second"))
    finally:
        for h in hooks:
            h.remove()
    assert ran == ["block1", "block2"]


def test_a_checkpoint_is_a_model_for_ingest_evaluate_and_classify(cli, checkpoint, shapes, db_url):
    path, _ = checkpoint
    out = json.loads(cli("ingest", "--stage", "all", "--data", shapes, "--model", path, "--json").stdout)
    assert out["inserted"] == {"first": 300, "second": 300, "third": 300, "origin": 300}
    with psycopg.connect(db_url) as conn:
        types = dict(conn.execute("SELECT stage, dim FROM embedding_spaces").fetchall())
        spaces = conn.execute("SELECT DISTINCT model, weights FROM embedding_spaces WHERE stage <> 'first'").fetchall()
    assert types == {"first": 3072, "second": 16, "third": 24, "origin": 10}  # the widths the checkpoint declares
    assert spaces == [("shapes-cnn", f"sha256:{file_sha256(path)}")]
    ev = json.loads(cli("evaluate", "--stage", "all", "--data", shapes, "--model", path, "--json").stdout)
    # origin is the classifier's argmax, computed here from the network directly
    enc = TrainedEncoder(path)
    src = open_source(shapes)
    pixels, labels, _ = load_split(src, "test", workers=0)
    expected = int((enc.encode(pixels, parse_stages("origin")).vectors["origin"].argmax(1) == labels).sum())
    assert ev["stages"]["origin"]["correct"] == expected
    assert set(ev["stages"]) == {"first", "second", "third", "origin"}
    sample = next((shapes / "test" / synthetic.CLASSES[2]).glob("*.png"))
    got = json.loads(cli("classify", sample, "--stage", "origin", "--model", path, "--json").stdout)
    logits = enc.encode(_pixels_of(sample), parse_stages("origin")).vectors["origin"]
    assert got[0]["predicted_class"] == src.classes[int(logits.argmax())]


def _pixels_of(path: Path) -> np.ndarray:
    from clipvdb.images import first_stage_pixels, load_image

    return first_stage_pixels(load_image(path))[None]


def test_a_checkpoint_is_found_by_name_in_the_home(cli, shapes, tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("CLIPVDB_HOME", str(home))
    out = json.loads(
        cli(
            "train",
            "--data",
            shapes,
            "--name",
            "mini",
            "--epochs",
            "1",
            "--widths",
            "4,4,4",
            "--workers",
            "0",
            "--json",
        ).stdout
    )
    assert Path(out["path"]) == home / "models" / "mini.pt"
    enc = load_encoder("mini", "openai", home=home)
    assert enc.name == "mini" and enc.weights == f"sha256:{out['sha256']}"
    with pytest.raises(UsageError, match="checkpoint not found"):
        load_encoder("missing.pt", "openai", home=home)


def test_bad_checkpoints_get_one_line_errors(tmp_path, cli, checkpoint):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(WeightsError, match="not .*clipvdb checkpoint|cannot read"):
        TrainedEncoder(junk)
    torch.save({"some": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(WeightsError, match="is not a clipvdb checkpoint"):
        TrainedEncoder(tmp_path / "other.pt")
    r = cli("classify", __file__, "--stage", "third", "--model", junk, expect=1)
    assert "cannot read" in r.output and "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    path, _ = checkpoint
    r = cli("retrieve", "a cat", "--model", path, expect=2)
    assert "no text tower" in r.output


def test_a_short_training_on_real_cifar10_beats_stage_first(cifar_jpeg, tmp_path):
    """Two epochs on 10,000 real images (a fixed count, so a busy machine trains as far as a quiet one):
    third's 1-NN beats raw pixels' on held-out images (0.51 against 0.288; one epoch reaches 0.394)."""
    src = open_source(cifar_jpeg)
    result = train(src, tmp_path / "c.pt", TrainOptions(limit=10_000, epochs=2))
    enc = TrainedEncoder(Path(result.path))
    train_x, train_y, _ = load_split(src, "train", 10_000)
    test_x, test_y, _ = load_split(src, "test", 1_000)

    def one_nn(a: np.ndarray, b: np.ndarray) -> float:
        d = torch.cdist(torch.from_numpy(b), torch.from_numpy(a))
        return float((train_y[d.argmin(1).numpy()] == test_y).mean())

    def pixels(x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1).astype(np.float32) / 255

    third = [enc.encode(x, parse_stages("third")).vectors["third"] for x in (train_x, test_x)]
    first_acc, third_acc = one_nn(pixels(train_x), pixels(test_x)), one_nn(*third)
    assert third_acc > first_acc + 0.15, (first_acc, third_acc)
    assert os.path.getsize(result.path) < 5_000_000
