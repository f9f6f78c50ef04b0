"""Every search, evaluate, report and admin option reaches what it controls: observed in the
answers the database gives, not in what the code meant to send."""

import json

import numpy as np
import psycopg
import pytest
from PIL import Image

from clipvdb import catalog, indexes
from clipvdb.storage import StageRows
from clipvdb.knn import KnnSearcher, Neighbor, SearchSettings, vote
from clipvdb.stages import STAGES

SECOND = STAGES["second"]
PIXELS = ("pixels", "none")


def _load(conn, stage, X: np.ndarray, labels=None) -> list[int]:
    conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x') ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO classes VALUES (1, 0, 'a'), (1, 1, 'b') ON CONFLICT DO NOTHING")
    space = catalog.get_or_create_space(conn, stage, None if not stage.uses_clip else _Fake())
    labels = labels if labels is not None else [i % 2 for i in range(len(X))]
    rows = [(f"k{i}", int(labels[i]), bytes(32)) for i in range(len(X))]
    ids = catalog.upsert_images(conn, 1, "train", rows)
    image_ids = [ids[r[0]] for r in rows]
    StageRows(stage, space, 1, "train").copy(conn, image_ids, X)
    conn.commit()
    return image_ids


class _Fake:
    name, weights = "fake", "fake"


def _nearest(conn, stage, identity, Q, settings) -> list[int]:
    s = KnnSearcher(conn, stage, identity, 1, "train", settings)
    conn.commit()
    neigh, _ = s.search(conn, Q)
    return [n[0].image_id for n in neigh]


def _exact_ids(X, Q, ids):
    d = ((Q[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    return [ids[j] for j in d.argmin(1)]


def test_vote_takes_the_majority_and_breaks_ties_by_the_nearest():
    n = lambda i, label, d: Neighbor(i, label, f"s{i}", d)  # noqa: E731
    assert vote([n(1, 0, 1.0), n(2, 1, 1.5), n(3, 1, 2.0)])[0] == 1  # two b's beat the nearer a
    label, best = vote([n(1, 0, 3.0), n(2, 1, 1.0), n(3, 0, 4.0), n(4, 1, 2.0)])  # 2-2 tie
    assert label == 1 and best.image_id == 2  # the tie goes to the label of the nearest neighbour
    assert vote([n(5, 1, 2.0), n(6, 0, 2.0)])[0] == 0  # equal distances: the lower label


def test_k_votes_through_the_cli(cli, syn_data):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    img = syn_data / "test" / "red-circle" / "0000.png"
    pred = json.loads(cli("classify", img, "--stage", "first", "--k", "5", "--exact", "--json").stdout)[0]
    labels = [nb["label"] for nb in pred["neighbors"]]
    neighbours = [Neighbor(nb["image_id"], nb["label"], nb["source"], nb["distance"]) for nb in pred["neighbors"]]
    assert len(labels) == 5 and pred["predicted"] == vote(neighbours)[0]
    assert pred["nearest_distance"] == pred["neighbors"][0]["distance"] <= pred["distance"]


def test_probes_reach_the_server(conn):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((2000, SECOND.dim)).astype(np.float32)
    ids = _load(conn, SECOND, X)
    indexes.build(conn, SECOND, "ivfflat", lists=40)
    Q = rng.standard_normal((40, SECOND.dim)).astype(np.float32)
    truth = _exact_ids(X, Q, ids)
    one = _nearest(conn, SECOND, ("fake", "fake"), Q, SearchSettings(probes=1))
    every = _nearest(conn, SECOND, ("fake", "fake"), Q, SearchSettings(probes=40))
    assert every == truth  # all lists scanned: exact
    assert np.mean([a == b for a, b in zip(one, truth, strict=True)]) < 0.9  # one list of 40: far from it


def test_ef_search_reaches_the_server(conn):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, SECOND.dim)).astype(np.float32)
    ids = _load(conn, SECOND, X)
    indexes.build(conn, SECOND, "hnsw", m=4, ef_construction=8)
    Q = rng.standard_normal((40, SECOND.dim)).astype(np.float32)
    truth = _exact_ids(X, Q, ids)
    recall = {
        ef: np.mean(
            [
                a == b
                for a, b in zip(
                    _nearest(conn, SECOND, ("fake", "fake"), Q, SearchSettings(ef_search=ef)), truth, strict=True
                )
            ]
        )  # fmt: skip
        for ef in (1, 1000)
    }
    assert recall[1000] > recall[1] and recall[1000] >= 0.9, recall


def test_candidates_reach_the_server_and_exact_and_cosine_bypass_the_projection(conn):
    first = STAGES["first"]
    rng = np.random.default_rng(2)
    X = rng.random((600, first.dim), dtype=np.float32)
    ids = _load(conn, first, X)
    indexes.build(conn, first, "ivfflat", project=4, lists=1)  # 4 of 3,072 dims: poor candidates
    Q = rng.random((30, first.dim), dtype=np.float32)
    X16 = X.astype(np.float16).astype(np.float64)
    truth = _exact_ids(X16, Q.astype(np.float16).astype(np.float64), ids)
    few = _nearest(conn, first, PIXELS, Q, SearchSettings(candidates=1))
    all_ = _nearest(conn, first, PIXELS, Q, SearchSettings(candidates=600))
    assert all_ == truth  # every row re-ranked exactly
    assert np.mean([a == b for a, b in zip(few, truth, strict=True)]) < 0.5
    exact = KnnSearcher(conn, first, PIXELS, 1, "train", SearchSettings(exact=True, candidates=1))
    cosine = KnnSearcher(conn, first, PIXELS, 1, "train", SearchSettings(metric="cosine"))
    conn.commit()
    assert exact.projection is None and cosine.projection is None
    assert _nearest(conn, first, PIXELS, Q, SearchSettings(exact=True, candidates=1)) == truth


def test_evaluate_metric_prompts_against_and_two_datasets(cli, db_url, syn_data, tmp_path):
    w = ["--model", "tiny", "--workers", "0"]
    cli("ingest", "--stage", "first,origin", "--data", syn_data, *w)
    cli("ingest", "--stage", "first", "--data", syn_data, "--split", "test", *w)
    # a second dataset in the same database: its own classes, chosen by --dataset
    other = tmp_path / "other"
    for split in ("train", "test"):
        for i, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
            folder = other / split / ("reds" if i == 0 else "blues")
            folder.mkdir(parents=True)
            Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(folder / "a.png")
    cli("ingest", "--stage", "first", "--data", other, "--dataset", "colours", *w)
    ambiguous = cli("classify", syn_data / "test" / "red-circle" / "0000.png", "--stage", "first", expect=2)
    assert "several datasets" in ambiguous.output
    runs = {}
    for args in (["--metric", "cosine"], ["--metric", "l2", "--against", "test"], ["--prompts", "photo"]):
        stage = "origin" if "--prompts" in args else "first"
        out = json.loads(cli("evaluate", "--stage", stage, "--data", syn_data, "--dataset", "syn", "--json",
                             *args, *w).stdout)  # fmt: skip
        runs[tuple(args)] = out
    rows = {}
    for out in runs.values():
        rep = json.loads(cli("report", "--run", out["run_id"], "--view", "report_runs", "--json").stdout)
        rows[out["run_id"]] = rep["report_runs"][0]
    cos = rows[runs[("--metric", "cosine")]["run_id"]]
    assert cos["metric"] == "cosine" and cos["params"]["against"] == "train"
    same = runs[("--metric", "l2", "--against", "test")]
    assert rows[same["run_id"]]["params"]["against"] == "test"
    assert same["stages"]["first"]["accuracy_pct"] == 100.0  # each test image finds itself
    assert rows[runs[("--prompts", "photo")]["run_id"]]["prompts"] == "photo"
    colours = json.loads(cli("classify", other / "test" / "reds" / "a.png", "--stage", "first", "--dataset",
                             "colours", "--json").stdout)  # fmt: skip
    assert colours[0]["predicted_class"] == "reds"


def test_ingest_split_and_strict_through_the_cli(cli, db_url, syn_data, tmp_path):
    out = json.loads(cli("ingest", "--stage", "first", "--data", syn_data, "--split", "test", "--json",
                         "--workers", "0").stdout)  # fmt: skip
    assert out["split"] == "test" and out["inserted"] == {"first": 20}
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT DISTINCT split FROM images").fetchall() == [("test",)]
    bad = tmp_path / "bad"
    (bad / "train" / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad / "train" / "x" / "a.png")
    (bad / "train" / "x" / "b.png").write_bytes(b"not an image")
    strict = cli("ingest", "--stage", "first", "--data", bad, "--strict", "--dataset", "bad", "--workers", "0",
                 expect=3)  # fmt: skip
    assert "b.png" in strict.output and "--strict" in strict.output


def test_report_run_view_and_unknown_view_and_plot_run(cli, syn_data, tmp_path):
    w = ["--workers", "0"]
    cli("ingest", "--stage", "first", "--data", syn_data, *w)
    r1 = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--num", "4", "--json", *w).stdout)
    r2 = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--num", "6", "--json", *w).stdout)
    one = json.loads(cli("report", "--run", r1["run_id"], "--view", "report_accuracy", "--json").stdout)
    assert one["run_id"] == r1["run_id"] and set(one) == {"run_id", "report_accuracy"}
    assert one["report_accuracy"][0]["n"] == 4
    latest = json.loads(cli("report", "--view", "report_accuracy", "--json").stdout)
    assert latest["run_id"] == r2["run_id"] and latest["report_accuracy"][0]["n"] == 6
    bad = cli("report", "--view", "report_nothing", expect=2)
    assert "unknown view 'report_nothing'" in bad.output and len(bad.output.strip().splitlines()) == 1
    paths = cli("plot", "--run", r1["run_id"], "--out", tmp_path / "p").output.split()
    assert all(f"run{r1['run_id']}_" in p for p in paths) and len(paths) == 2


def test_index_options_reach_the_index(cli, conn):
    rng = np.random.default_rng(3)
    _load(conn, SECOND, rng.standard_normal((300, SECOND.dim)).astype(np.float32))
    conn.close()
    out = json.loads(cli("index", "--stage", "second", "--kind", "ivfflat", "--lists", "7", "--json").stdout)[0]
    assert out["params"]["lists"] == 7
    out = json.loads(cli("index", "--stage", "second", "--kind", "hnsw", "--m", "4", "--ef-construction", "9",
                         "--json").stdout)[0]  # fmt: skip
    assert out["params"]["m"] == 4 and out["params"]["ef_construction"] == 9
    bad = cli("index", "--stage", "second", "--kind", "hnsw", "--m", "8", "--ef-construction", "9", expect=2)
    assert "at least 2 x --m" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_index_definitions_on_the_server(cli, db_url):
    rng = np.random.default_rng(4)
    with psycopg.connect(db_url) as c:
        from pgvector.psycopg import register_vector

        register_vector(c)
        _load(c, SECOND, rng.standard_normal((300, SECOND.dim)).astype(np.float32))
    cli("index", "--stage", "second", "--kind", "hnsw", "--m", "4", "--ef-construction", "9")
    with psycopg.connect(db_url) as c:
        d = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'embeddings_second_ann'").fetchone()[0]
    assert "m='4'" in d and "ef_construction='9'" in d
    cli("index", "--stage", "second", "--kind", "ivfflat", "--lists", "7")
    with psycopg.connect(db_url) as c:
        d = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'embeddings_second_ann'").fetchone()[0]
    assert "lists='7'" in d


def test_db_downgrade_and_grant_reader_password(cli, db_url):
    out = cli("db", "grant-reader", "analyst", "--password", "s3cret").output
    assert "analyst" in out
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'analyst'").fetchone()[0]
        c.execute("DROP OWNED BY analyst")
        c.execute("DROP ROLE analyst")
    assert "schema at revision 0005" in cli("db", "downgrade", "0005").output
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('stage_counts')").fetchone()[0] is None
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0005"
    cli("db", "upgrade")
    assert "base" in cli("db", "downgrade", "base").output
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('images')").fetchone()[0] is None


@pytest.mark.parametrize("k", [2, 4])
def test_web_k_image_id_and_search_k(store, syn_data, k):
    from clipvdb.web import create_app

    store.ingest(syn_data, "first,origin", workers=0)
    store.evaluate(syn_data, "first", workers=0, num=2)
    client = create_app(store, k=k).test_client()
    with store.connection() as conn:
        test_id = conn.execute("SELECT min(id) FROM images WHERE split = 'test'").fetchone()[0]
    page = client.get(f"/classify?image_id={test_id}&stage=first").get_data(as_text=True)
    assert page.count('<div class="tile"><img src="/image/') == k and f"stored image {test_id}" in page
    hits = client.get("/search?q=a+red+circle&k=3").get_data(as_text=True)
    assert hits.count("/image/") >= 3
    assert client.get("/search?q=x&k=0").status_code == 400
