"""Every encoder in one database: models of different widths stored side by side at one stage,
each in its embedding space with its own index, each answering as it does alone."""

import json

import psycopg
import pytest
from conftest import search_plan

from clipvdb import SearchSettings, Store, TinyEncoder, queries

NARROW = {"second": 96, "third": 64, "origin": 48}


def _answers(store: Store, images: list[str], stage: str, settings: SearchSettings) -> list[tuple[str, float]]:
    """Each image's nearest stored image (its source key) and distance."""
    return [(p.neighbors[0]["source"], round(p.distance, 4)) for p in store.classify(images, stage, settings)]


@pytest.fixture
def test_images(syn_data) -> list[str]:
    return sorted(str(p) for p in (syn_data / "test").rglob("*.png"))


def test_two_models_of_different_widths_share_a_stage_and_answer_as_they_do_alone(
    db_url, empty_db_url, syn_data, test_images, cli
):
    narrow, wide = TinyEncoder(widths=NARROW), TinyEncoder()
    for encoder in (wide, narrow):
        with Store(db_url, encoder=encoder) as store:
            result = store.ingest(syn_data, "second,third", workers=0)
            assert result.inserted == {"second": result.total, "third": result.total}
            store.index("second", kind="ivfflat", lists=2)
    with Store(empty_db_url, encoder=narrow) as alone:
        alone.ingest(syn_data, "second,third", workers=0)
        alone.index("second", kind="ivfflat", lists=2)
        expected = {s: _answers(alone, test_images, s, SearchSettings()) for s in ("second", "third")}
        exact = _answers(alone, test_images, "second", SearchSettings(exact=True))

    with Store(db_url, encoder=narrow) as shared:
        for stage in ("second", "third"):
            assert _answers(shared, test_images, stage, SearchSettings()) == expected[stage], stage
        assert _answers(shared, test_images, "second", SearchSettings(exact=True)) == exact
        spaces = {(sp.model, sp.weights, sp.stage): sp for sp in shared.status().spaces}
        own = spaces[("tiny", narrow.weights, "second")]
        other = spaces[("tiny", wide.weights, "second")]
        assert (own.dim, other.dim) == (96, 1024) and own.rows == other.rows > 0
        assert own.kind == other.kind == "ivfflat" and own.exists and other.exists
        # the search reads its own space's index, never the other model's
        plan = search_plan(shared, "second", test_images[0])
        assert queries.index_name(shared.searcher("second").stage, own.space, 1) in plan, plan
        assert queries.index_name(shared.searcher("second").stage, other.space, 1) not in plan, plan
    with Store(db_url, encoder=wide) as other_store:
        plan = search_plan(other_store, "second", test_images[0])
        assert f"embeddings_second_ann_{other.space}_1" in plan and f"embeddings_second_ann_{own.space}_1" not in plan

    listed = json.loads(cli("models", "--json").stdout)
    widths = sorted((m["stage"], m["dim"]) for m in listed)
    assert widths == [("second", 96), ("second", 1024), ("third", 64), ("third", 2048)], listed
    status = cli("db", "status").stdout
    assert status.count("tiny (") == 4 and "index: ivfflat" in status, status
    table = cli("models").stdout
    assert "tiny" in table and "96" in table and "1024" in table


def test_a_stage_keeps_one_width_per_space(db_url, syn_data):
    """The same weights identity cannot change its widths: its rows would not match its index."""
    from clipvdb.errors import StageError

    with Store(db_url, encoder=TinyEncoder(widths=NARROW)) as store:
        store.ingest(syn_data, "second", limit=5, workers=0)
        with psycopg.connect(db_url) as c:
            c.execute("UPDATE embedding_spaces SET dim = 97 WHERE stage = 'second'")
        with pytest.raises(StageError, match="was stored as 97-d vectors and is now 96-d"):
            store.ingest(syn_data, "second", limit=10, workers=0)


def test_ingest_takes_a_list_of_models(cli, syn_data):
    from clipvdb.demo import SHIPPED_MODEL

    models = f"tiny,{SHIPPED_MODEL}"
    ingested = json.loads(
        cli("ingest", "--stage", "second", "--data", syn_data, "--model", models, "--workers", "0", "--json").stdout
    )
    assert [r["model"] for r in ingested] == ["tiny", str(SHIPPED_MODEL)]
    assert ingested[0]["inserted"] == ingested[1]["inserted"] == {"second": ingested[0]["total"]}
    spaces = json.loads(cli("models", "--json").stdout)
    assert sorted(s["model"] for s in spaces if s["stage"] == "second") == ["cnn", "tiny"], spaces
    # evaluate of a list of models: one run of them all (tests/test_several_models.py)
    wrong = cli("ingest", "--stage", "second", "--data", syn_data, "--model", models, "--pretrained", "x", expect=2)
    assert "--pretrained names one model's weights" in wrong.output and len(wrong.output.strip().splitlines()) == 1
