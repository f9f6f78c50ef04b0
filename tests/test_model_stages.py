"""A model declares its stages and their widths; the storage follows what it declares."""

import numpy as np
import psycopg
import pytest

from clipvdb import SearchSettings, Store, TinyEncoder
from clipvdb.clip_model import load_model
from clipvdb.errors import StageError
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


def _column(url: str, table: str, column: str) -> str:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
            (table, column),
        ).fetchone()[0]


def test_an_empty_stage_takes_the_models_width_and_a_filled_one_refuses_another(db_url, syn_data):
    narrow = TinyEncoder(widths={"second": 96, "third": 64, "origin": 48})
    with Store(db_url, encoder=narrow) as store:
        result = store.ingest(syn_data, "second,origin", limit=20, workers=0)
        assert result.inserted == {"second": 20, "origin": 20}
        assert _column(db_url, "embeddings_second", "embedding") == "halfvec(96)"
        assert _column(db_url, "embeddings_origin", "embedding") == "halfvec(48)"
        assert _column(db_url, "cluster_centres_second", "centre") == "halfvec(96)"
        assert _column(db_url, "embeddings_third", "embedding") == "halfvec(2048)"  # nothing stored there: untouched
        image = str(syn_data / "test" / "red-circle" / "0000.png")
        [pred] = store.classify([image], "second", SearchSettings(exact=True))
        q = store.embed([image], "second")["second"][0]
        x = store.embed([syn_data / pred.neighbors[0]["source"]], "second")["second"][0]
        half = [v.astype(np.float16).astype(np.float64) for v in (q, x)]  # both sides as halfvec holds them
        assert pred.distance == pytest.approx(float(np.linalg.norm(half[0] - half[1])), rel=1e-4)
        [index] = store.index("second", kind="ivfflat", lists=2)  # an index follows the stored width too
        assert index.exists and index.rows == 20 and index.params["lists"] == 2
    with Store(db_url, encoder=TinyEncoder()) as store, pytest.raises(StageError, match="halfvec\\(96\\)"):
        store.ingest(syn_data, "second", limit=5, workers=0)
    assert _column(db_url, "embeddings_second", "embedding") == "halfvec(96)"
