"""Weights handling: offline errors, random weights announced and kept apart, ViT limits."""

import hashlib
import time

import numpy as np
import pytest
import torch

from clipvdb import catalog
from clipvdb.clip_model import load_model
from clipvdb.errors import StageError, UsageError, WeightsError
from clipvdb.forward_pass import run_stages
from clipvdb.stages import STAGES, parse_stages


def test_offline_openai_weights_fail_fast_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    start = time.perf_counter()
    with pytest.raises(WeightsError) as info:
        load_model("RN50", "openai", "cpu")
    assert time.perf_counter() - start < 30
    msg = str(info.value)
    assert "\n" not in msg and "--pretrained PATH" in msg and "random" in msg


def test_random_weights_are_announced_and_identified(capsys):
    lm = load_model("RN50", "random", "cpu")
    assert "RANDOM weights" in capsys.readouterr().err
    assert lm.weights == "random:seed=0" and lm.is_random
    again = load_model("RN50", "random", "cpu", quiet=True)
    a = next(lm.model.visual.parameters())
    b = next(again.model.visual.parameters())
    assert torch.equal(a, b), "random initialisation must be seeded"


def test_spaces_keep_weights_apart(rn50):
    random_lm = load_model("RN50", "random", "cpu", quiet=True)
    assert catalog.space_identity(STAGES["second"], rn50) != catalog.space_identity(STAGES["second"], random_lm)
    assert catalog.space_identity(STAGES["first"], rn50) == catalog.space_identity(STAGES["first"], random_lm)


def test_bad_names_and_paths():
    with pytest.raises(UsageError, match="unknown model"):
        load_model("RN9000", "random", "cpu")
    with pytest.raises(UsageError, match="checkpoint file not found"):
        load_model("RN50", "/no/such/ckpt.pt", "cpu")
    with pytest.raises(UsageError, match="unknown --pretrained"):
        load_model("RN50", "nonsense", "cpu")


def test_wrong_checkpoint_is_a_weights_error(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"visual.nothing": torch.zeros(1)}, bad)
    with pytest.raises(WeightsError, match="cannot load"):
        load_model("RN50", str(bad), "cpu")


def test_vit_origin_works_and_a_tower_without_stages_refuses():
    lm = load_model("ViT-B-32", "random", "cpu", quiet=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    out = run_stages(lm.visual, x, [STAGES["origin"]], lm.device)
    # origin is the tower's own output, computed by open_clip's forward
    with torch.no_grad():
        expected = lm.visual(x).numpy()
    assert out.vectors["origin"].shape == (2, 512)
    np.testing.assert_allclose(out.vectors["origin"], expected, rtol=1e-4, atol=1e-5)

    class Tower(torch.nn.Module):  # neither a CLIP ResNet nor a CLIP vision transformer
        output_dim = 4

        def forward(self, images):
            return images.flatten(1)[:, :4]

    with pytest.raises(StageError, match="need a CLIP ResNet or vision transformer"):
        run_stages(Tower(), x, parse_stages("second"), lm.device)


def test_openai_torchscript_archive_loads_through_open_clip(tmp_path):
    """An archive in the format of OpenAI's RN50.pt (a TorchScript module) goes through open_clip's
    OpenAI loader and gives the same image embeddings as the model it was made from."""
    import open_clip

    from clipvdb.clip_model import is_torchscript_archive

    torch.manual_seed(5)
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True).eval()
    # OpenAI's loader stores its weights through float16 (as OpenAI's archives hold them): start
    # from fp16-representable values so that both routes load exactly the same numbers
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    state_dict_path = tmp_path / "rn50-state.pt"
    torch.save(model.state_dict(), state_dict_path)
    # OpenAI's archives keep the attention mask as a plain attribute, outside the state dict
    mask = model._buffers.pop("attn_mask")
    model.attn_mask = mask
    path = tmp_path / "RN50.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    assert is_torchscript_archive(path)
    lm = load_model("RN50", str(path), "cpu")
    assert lm.weights == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"  # the archive's own
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        np.testing.assert_allclose(
            lm.model.encode_image(x).numpy(), model.encode_image(x).numpy(), rtol=1e-4, atol=1e-4
        )
    # the same weights as an open_clip state dict give the same image and text embeddings
    sd = load_model("RN50", str(state_dict_path), "cpu")
    prompts = ["a cat", "an automobile"]
    np.testing.assert_allclose(sd.encode_text(prompts), lm.encode_text(prompts), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(
            sd.model.encode_image(x).numpy(), lm.model.encode_image(x).numpy(), rtol=1e-4, atol=1e-4
        )


@pytest.mark.parametrize("name", ["RN50", "RN101", "RN50x4", "ViT-B-32"])
def test_openai_tags_build_the_quickgelu_text_tower(name):
    """open_clip's plain configs use nn.GELU; OpenAI trained with QuickGELU. What clipvdb builds for
    the openai tag (and for files and random weights of these names) must be QuickGELU."""
    import open_clip
    from open_clip.transformer import QuickGELU

    from clipvdb.clip_model import openai_architecture

    assert openai_architecture(name, "openai") and openai_architecture(name)
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=openai_architecture(name, "openai"))
    acts = [m for m in model.transformer.modules() if isinstance(m, QuickGELU | torch.nn.GELU)]
    assert acts and all(isinstance(m, QuickGELU) for m in acts)
    if name == "RN50":
        lm = load_model(name, "random", "cpu", quiet=True)
        assert lm.quick_gelu and all(
            isinstance(m, QuickGELU) for m in lm.model.transformer.modules() if isinstance(m, QuickGELU | torch.nn.GELU)
        )
