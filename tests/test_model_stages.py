"""A model declares its stages and their widths; the storage follows what it declares."""

import numpy as np
import pytest

from clipvdb.clip_model import load_model
from clipvdb.stages import STAGES, parse_stages


@pytest.mark.parametrize("name", ["RN50", "ViT-B-32"])
def test_declared_widths_are_the_widths_the_forward_pass_gives(name):
    model = load_model(name, "random", "cpu", quiet=True)
    computed = [s for s in parse_stages("all") if s.uses_clip and s.name in model.stages]
    out = model.encode(np.zeros((2, 224, 224, 3), np.uint8), computed)
    assert {n: v.shape[1] for n, v in out.vectors.items()} == {s.name: model.stages[s.name].dim for s in computed}
    assert model.stages["first"] == STAGES["first"]
    if name == "RN50":
        assert {n: s.dim for n, s in model.stages.items()} == {n: s.dim for n, s in STAGES.items()}
    else:  # a vision transformer: second and third at its width (768), origin its embedding (512)
        assert {n: s.dim for n, s in model.stages.items()} == {
            "first": 3072,
            "second": 768,
            "third": 768,
            "origin": 512,
        }


def test_vit_stages_come_from_one_pass_that_stops_early():
    """second after half the transformer blocks, third after all of them (token means), origin the
    embedding: one pass for several stages equals a pass per stage and the tower's own output, and a
    pass for second alone never runs the later blocks."""
    import torch

    from clipvdb.forward_pass import run_stages

    model = load_model("ViT-B-32", "random", "cpu", quiet=True)
    visual = model.visual
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    together = run_stages(visual, x, parse_stages("all"), model.device)
    for name in ("second", "third", "origin"):
        alone = run_stages(visual, x, parse_stages(name), model.device)
        np.testing.assert_array_equal(alone.vectors[name], together.vectors[name])
    with torch.inference_mode():
        np.testing.assert_allclose(together.vectors["origin"], visual(x).float().numpy(), rtol=1e-5, atol=1e-6)
        blocks = visual.transformer.resblocks
        h = visual._embeds(x)
        for block in list(blocks)[: len(blocks) // 2]:
            h = block(h)
    np.testing.assert_allclose(together.vectors["second"], h.mean(dim=1).numpy(), rtol=1e-5, atol=1e-6)
    ran: list[int] = []
    hooks = [b.register_forward_hook(lambda m, i, o, n=n: ran.append(n)) for n, b in enumerate(blocks)]
    try:
        run_stages(visual, x, parse_stages("second"), model.device)
    finally:
        for h_ in hooks:
            h_.remove()
    assert ran == list(range(len(blocks) // 2))
