"""The stage encoder: exact stage definitions, real early exit, one pass for several stages."""

import numpy as np
import pytest
import torch
from conftest import write_png
from PIL import Image

from clipvdb import zeroshot
from clipvdb.errors import StageError
from clipvdb.forward_pass import run_stages
from clipvdb.images import first_stage_pixels, load_image
from clipvdb.pipeline import embed
from clipvdb.stages import STAGES, parse_stages


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("imgs")
    return [write_png(folder / f"{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for i in range(3)]


@pytest.fixture(scope="module")
def batch(rn50, images):
    return torch.stack([rn50.preprocess(load_image(p)) for p in images])


def _reference(visual, x):
    """Each stage computed directly from the open_clip modules, written out independently."""
    with torch.no_grad():
        h = visual.layer3(visual.layer2(visual.layer1(visual.stem(x))))
        second = h.mean(dim=(2, 3))
        h4 = visual.layer4(h)
        n, c, hh, ww = h4.shape
        tokens = h4.flatten(2).permute(2, 0, 1)
        tokens = torch.cat([tokens.mean(0, keepdim=True), tokens], 0) + visual.attnpool.positional_embedding[:, None]
        third = tokens.mean(0)
    return {"second": second.numpy(), "third": third.numpy()}


def test_checkpoint_loads_through_open_clip_with_file_identity(rn50, rn50_checkpoint):
    assert rn50.weights.startswith("sha256:")
    assert rn50.name == "RN50"


def test_stages_equal_reference_and_origin_equals_encode_image(rn50, batch):
    out = run_stages(rn50.visual, batch, parse_stages("all"), rn50.device)
    ref = _reference(rn50.visual, batch)
    np.testing.assert_allclose(out.vectors["second"], ref["second"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.vectors["third"], ref["third"], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        encode_image = rn50.model.encode_image(batch).numpy()
    np.testing.assert_allclose(out.vectors["origin"], encode_image, rtol=1e-5, atol=1e-5)
    assert {k: v.shape[1] for k, v in out.vectors.items()} == {"second": 1024, "third": 2048, "origin": 1024}


def test_one_pass_equals_separate_passes_and_is_deterministic(rn50, batch):
    together = run_stages(rn50.visual, batch, parse_stages("second,third,origin"), rn50.device)
    for name in ("second", "third", "origin"):
        alone = run_stages(rn50.visual, batch, parse_stages(name), rn50.device)
        np.testing.assert_array_equal(alone.vectors[name], together.vectors[name])
        assert list(alone.vectors) == [name]


class _Calls:
    def __init__(self, visual):
        self.counts = {}
        self.handles = [
            getattr(visual, n).register_forward_hook(self._hook(n)) for n in ("layer1", "layer3", "layer4", "attnpool")
        ]

    def _hook(self, name):
        def hook(*_):
            self.counts[name] = self.counts.get(name, 0) + 1

        return hook

    def close(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize(
    "stages, expected",
    [
        ("second", {"layer1": 1, "layer3": 1}),
        ("third", {"layer1": 1, "layer3": 1, "layer4": 1}),
        ("origin", {"layer1": 1, "layer3": 1, "layer4": 1, "attnpool": 1}),
        ("all", {"layer1": 1, "layer3": 1, "layer4": 1, "attnpool": 1}),
        ("first", {}),
    ],
)
def test_early_exit(rn50, batch, stages, expected):
    calls = _Calls(rn50.visual)
    try:
        run_stages(rn50.visual, batch[:1], parse_stages(stages), rn50.device)
    finally:
        calls.close()
    assert calls.counts == expected


def test_first_stage_is_the_exact_pixels(tmp_path):
    arr = np.arange(32 * 32 * 3, dtype=np.uint32).reshape(32, 32, 3).astype(np.uint8)
    path = write_png(tmp_path / "known.png", arr)
    vec = embed([str(path)], parse_stages("first"), None)["first"][0]
    assert vec.shape == (3072,)
    np.testing.assert_array_equal(vec, arr.transpose(2, 0, 1).reshape(-1).astype(np.float32) / 255.0)


def test_image_modes(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    rgba = write_png(tmp_path / "rgba.png", np.dstack([rgb, np.full((32, 32), 255, np.uint8)]), "RGBA")
    grey = write_png(tmp_path / "grey.png", rgb[:, :, 0], "L")
    pal = tmp_path / "pal.png"
    Image.fromarray(rgb).convert("P").save(pal)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(deep)
    big = write_png(tmp_path / "big.png", np.zeros((64, 48, 3), np.uint8) + 200)
    vecs = embed([str(p) for p in (rgba, grey, pal, deep, big)], parse_stages("first"), None)["first"]
    assert vecs.shape == (5, 3072)
    np.testing.assert_array_equal(vecs[0], rgb.transpose(2, 0, 1).reshape(-1) / np.float32(255))
    g = vecs[1].reshape(3, 32, 32)
    np.testing.assert_array_equal(g[0], g[1])
    np.testing.assert_allclose(vecs[3], 1.0)  # 16-bit white stays white, not clipped noise
    np.testing.assert_allclose(vecs[4], 200 / 255, atol=1 / 255)  # resized to 32x32
    assert load_image(pal).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (20, 40)
    assert first_stage_pixels(load_image(path)).shape == (32, 32, 3)


def test_zero_shot_picks_the_nearest_prompt_by_cosine(rn50, batch):
    classes = ["airplane", "automobile", "bird", "cat"]
    text = zeroshot.text_embeddings(rn50, classes, "study")
    assert text.shape == (4, 1024)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, rtol=1e-5)
    assert zeroshot.prompts_for(classes, "study")[:2] == ["a airplane", "an automobile"]
    assert zeroshot.prompts_for(["cat"], "photo") == ["a photo of a cat."]
    assert zeroshot.text_embeddings(rn50, classes, "study") is text  # cached
    out = run_stages(rn50.visual, batch, [STAGES["origin"]], rn50.device)
    labels, dist = zeroshot.classify(out.vectors["origin"], text)
    v = out.vectors["origin"] / np.linalg.norm(out.vectors["origin"], axis=1, keepdims=True)
    sims = v @ text.T
    np.testing.assert_array_equal(labels, sims.argmax(axis=1))
    np.testing.assert_allclose(dist, 1.0 - sims.max(axis=1), rtol=1e-6)


def test_batched_uint8_pipeline_equals_open_clip_preprocess_bit_for_bit(rn50, images, batch):
    """The workers' uint8 output plus the batch normalisation give exactly open_clip's floats."""
    prepared = np.stack([rn50.prepare(load_image(p)) for p in images])
    assert prepared.dtype == np.uint8 and prepared.shape == (3, 224, 224, 3)
    torch.testing.assert_close(rn50.to_input(prepared), batch, rtol=0, atol=0)
    via_pipeline = embed([str(p) for p in images], parse_stages("all"), rn50)
    direct = run_stages(rn50.visual, batch, parse_stages("all"), rn50.device)
    for name in ("second", "third", "origin"):
        np.testing.assert_allclose(via_pipeline[name], direct.vectors[name], rtol=1e-5, atol=1e-6)


def test_clip_preprocessing_is_openais(rn50):
    from torchvision import transforms as T

    steps = rn50.preprocess.transforms
    resize = next(t for t in steps if isinstance(t, T.Resize))
    crop = next(t for t in steps if isinstance(t, T.CenterCrop))
    norm = next(t for t in steps if isinstance(t, T.Normalize))
    assert resize.size in (224, [224], (224, 224)) and resize.interpolation == T.InterpolationMode.BICUBIC
    assert tuple(crop.size) == (224, 224)
    np.testing.assert_allclose(norm.mean, (0.48145466, 0.4578275, 0.40821073))
    np.testing.assert_allclose(norm.std, (0.26862954, 0.26130258, 0.27577711))
    # a 448x224 image: short side to 224 (bicubic), then the centre 224x224
    img = Image.fromarray(
        np.concatenate(
            [
                np.zeros((224, 112, 3), np.uint8),
                np.full((224, 224, 3), 200, np.uint8),
                np.zeros((224, 112, 3), np.uint8),
            ],
            axis=1,
        )
    )
    out = rn50.prepare(img)
    assert out.shape == (224, 224, 3) and (out == 200).all()


def test_parse_stages():
    assert [s.name for s in parse_stages("all")] == ["first", "second", "third", "origin"]
    assert [s.name for s in parse_stages("origin, first")] == ["first", "origin"]
    with pytest.raises(StageError, match="unknown stage 'fourth'"):
        parse_stages("fourth")


_ENCODE_IN_A_FRESH_PROCESS = """
import sys, numpy as np
from clipvdb.encoder import load_encoder
from clipvdb.images import load_image
from clipvdb.clip_model import keep_freed_memory
from clipvdb.stages import parse_stages
enc = load_encoder("RN50", sys.argv[1], "cpu", quiet=True)
batch = np.stack([enc.prepare(load_image(p)) for p in sys.argv[3:]])
np.savez(sys.argv[2], kept=keep_freed_memory(), **enc.encode(batch, parse_stages("all")).vectors)
"""


def test_keeping_freed_memory_leaves_the_embeddings_bit_for_bit(rn50_checkpoint, images, tmp_path):
    """The malloc setting the CPU encoder runs with (models.keep_freed_memory) is process-wide, so
    each side runs in a fresh process: with it on (the default) and turned off by the variable."""
    import os
    import subprocess
    import sys

    out = {}
    for flag in ("1", "0"):
        env = {**os.environ, "CLIPVDB_KEEP_FREED_MEMORY": flag}
        path = tmp_path / f"{flag}.npz"
        subprocess.run(
            [sys.executable, "-c", _ENCODE_IN_A_FRESH_PROCESS, str(rn50_checkpoint), str(path), *map(str, images)],
            env=env,
            check=True,
        )
        out[flag] = np.load(path)
    assert bool(out["1"]["kept"]) is (sys.platform == "linux") and not bool(out["0"]["kept"])
    for stage in ("second", "third", "origin"):
        assert out["1"][stage].shape == (3, STAGES[stage].dim)
        assert np.array_equal(out["1"][stage], out["0"][stage]), stage
