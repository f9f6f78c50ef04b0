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
    else:  # a vision transformer has no ResNet layers: first and origin only
        assert list(model.stages) == ["first", "origin"] and model.stages["origin"].dim == 512


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
        assert _column(db_url, "embeddings_second", "embedding") == "vector(96)"
        assert _column(db_url, "embeddings_origin", "embedding") == "vector(48)"
        assert _column(db_url, "cluster_centres_second", "centre") == "vector(96)"
        assert _column(db_url, "embeddings_third", "embedding") == "halfvec(2048)"  # nothing stored there: untouched
        image = str(syn_data / "test" / "red-circle" / "0000.png")
        [pred] = store.classify([image], "second", SearchSettings(exact=True))
        q = store.embed([image], "second")["second"][0]
        x = store.embed([syn_data / pred.neighbors[0]["source"]], "second")["second"][0]
        assert pred.distance == pytest.approx(float(np.linalg.norm(q - x)), rel=1e-4)
        [index] = store.index("second", "ivfflat", lists=2)  # an index follows the stored width too
        assert index.exists and index.rows == 20 and index.params["lists"] == 2
    with Store(db_url, encoder=TinyEncoder()) as store, pytest.raises(StageError, match="vector\\(96\\)"):
        store.ingest(syn_data, "second", limit=5, workers=0)
    assert _column(db_url, "embeddings_second", "embedding") == "vector(96)"
