"""Filtered search: with several datasets in one database, a search in one of them reads an index of
that dataset's rows alone and answers as the dataset does in a database of its own."""

import json

import psycopg
from conftest import search_plan

from clipvdb import SearchSettings, Store, TinyEncoder, queries


def _answers(store: Store, images: list[str], stage: str, dataset: str, settings=None) -> list[tuple[str, float]]:
    """Each image's nearest stored image (its source key) and distance, searched in `dataset`."""
    found = store.classify(images, stage, settings or SearchSettings(), dataset=dataset)
    return [(p.neighbors[0]["source"], round(p.distance, 4)) for p in found]


def _ann_indexes(url: str) -> set[str]:
    with psycopg.connect(url) as c:
        return {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE indexname ~ '_ann_'").fetchall()}


def test_a_dataset_beside_another_answers_as_alone_from_its_own_index(db_url, empty_db_url, syn_data, cli):
    """Dataset b holds the same images as a (every row of b as near to a query as a's: the worst
    case for a filter after the index scan). Searches in a at stage first (the default projected
    ivfflat) and second (hnsw) give a's answers alone, through a's index and never b's; each index
    covers its dataset's rows; `index --dataset` rebuilds one dataset's; dropping b drops b's."""
    test_images = sorted(str(p) for p in (syn_data / "test").rglob("*.png"))
    with Store(empty_db_url, encoder=TinyEncoder()) as alone:
        alone.ingest(syn_data, "first,second", dataset="a", workers=0)
        alone.index("second", kind="hnsw", m=4, ef_construction=8)
        expected = {s: _answers(alone, test_images, s, "a") for s in ("first", "second")}
    with Store(db_url, encoder=TinyEncoder()) as shared:
        for name in ("a", "b"):
            shared.ingest(syn_data, "first,second", dataset=name, workers=0)
        shared.index("second", kind="hnsw", m=4, ef_construction=8)
        for stage in ("first", "second"):
            assert _answers(shared, test_images, stage, "a") == expected[stage], stage
        first, second = shared.searcher("first", dataset="a"), shared.searcher("second", dataset="a")
        a, b = shared.dataset("a").id, shared.dataset("b").id
        for searcher in (first, second):
            plan = search_plan(shared, searcher.stage.name, test_images[0], "a")
            projected = searcher.stage.name == "first"
            own = queries.index_name(searcher.stage, searcher.space, a, projected=projected)
            other = queries.index_name(searcher.stage, searcher.space, b, projected=projected)
            assert f"Index Scan using {own} " in plan and other not in plan, plan
        rows = {i.dataset: i.rows for i in shared.index("second", kind="hnsw", m=4, ef_construction=8)}
        assert rows == {a: 60, b: 60} and shared.index_info("second", "a").rows == 60
        before = shared.index_info("second", "b").build_seconds

    listed = json.loads(cli("models", "--json").stdout)
    assert sorted((m["stage"], m["dataset"]) for m in listed) == [
        ("first", "a"),
        ("first", "b"),
        ("second", "a"),
        ("second", "b"),
    ], listed
    rebuilt = json.loads(cli("index", "--stage", "second", "--dataset", "a", "--kind", "ivfflat", "--json").stdout)
    assert [(i["dataset"], i["kind"]) for i in rebuilt] == [("a", "ivfflat")]
    with Store(db_url, encoder=TinyEncoder()) as shared:
        assert shared.index_info("second", "b").kind == "hnsw"
        assert shared.index_info("second", "b").build_seconds == before
    assert {n for n in _ann_indexes(db_url) if n.endswith(f"_{b}")} == {
        queries.index_name(first.stage, first.space, b, projected=True),
        queries.index_name(second.stage, second.space, b),
    }

    cli("dataset", "drop", "b", "--yes")
    left = _ann_indexes(db_url)
    assert not any(n.endswith(f"_{b}") for n in left), left
    assert queries.index_name(second.stage, second.space, a) in left
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT DISTINCT dataset_id FROM space_indexes").fetchall() == [(a,)]
        assert c.execute("SELECT DISTINCT dataset_id FROM space_projections").fetchall() == [(a,)]
