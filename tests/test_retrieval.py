"""Text search, composed queries, distance metrics, neighbor grids, search experiments."""

import json

import numpy as np
import psycopg
import pytest
from PIL import Image

from clipvdb.retrieval import CAPTION, TILE


@pytest.fixture
def stored(cli, syn_data):
    w = ["--model", "tiny"]
    cli("ingest", "--stage", "first,origin", "--data", syn_data, "--limit", "30", "--workers", "0", *w)
    return w


def _cosine_distance(q: np.ndarray, X: np.ndarray) -> np.ndarray:
    q, X = q.astype(np.float64), X.astype(np.float64)
    return 1 - X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))


def test_text_search_returns_k_rows_by_distance(cli, stored, store, syn_data):
    hits = json.loads(cli("retrieve", "a red circle", "--k", "5", "--json", *stored).stdout)
    assert len(hits) == 5
    dists = [h["distance"] for h in hits]
    assert dists == sorted(dists)
    # each distance is numpy's cosine distance between the text's vector and the image's origin vector
    # (the store fixture holds the same tiny encoder as --model tiny; both sides are half precision
    # in the database: the stored vectors and the query, typed as the column)
    text = store.encoder.encode_text(["a red circle"])[0].astype(np.float16)
    images = store.embed([syn_data / h["source"] for h in hits], "origin")["origin"].astype(np.float16)
    assert dists == pytest.approx(_cosine_distance(text, images).tolist(), rel=1e-4, abs=1e-6)
    assert all(h["source"].startswith("train/") for h in hits)
    table = cli("retrieve", "a red circle", "--k", "3", *stored).output
    assert "class_name" in table


def test_the_old_search_command_runs_retrieve_and_names_it(cli, stored):
    new = cli("retrieve", "a red circle", "--k", "3", "--json", *stored)
    old = cli("search", "a red circle", "--k", "3", "--json", *stored)
    assert json.loads(old.stdout) == json.loads(new.stdout) and len(json.loads(new.stdout)) == 3
    assert "clipvdb search is now 'clipvdb retrieve'" in old.stderr and "clipvdb search" not in new.stderr
    listed = [line.split()[0] for line in cli("--help").output.split("Commands:")[1].splitlines() if line.strip()]
    assert "retrieve" in listed and "search" not in listed  # hidden


def test_composed_query_differs_from_either_part(cli, stored, syn_data):
    img = str(syn_data / "test" / "blue-triangle" / "0000.png")
    text_only = json.loads(cli("retrieve", "red", "--k", "30", "--json", *stored).stdout)
    image_only = json.loads(cli("retrieve", "--image", img, "--k", "30", "--json", *stored).stdout)
    both = json.loads(cli("retrieve", "red", "--image", img, "--k", "30", "--json", *stored).stdout)
    order = lambda hits: [h["image_id"] for h in hits]  # noqa: E731
    assert order(both) != order(text_only) and order(both) != order(image_only)
    assert "origin" in cli("retrieve", "red", "--stage", "first", *stored, expect=2).output


def test_metrics_order_by_their_own_distance(cli, stored, store, syn_data):
    img = syn_data / "test" / "red-circle" / "0000.png"
    q = store.embed(img, "first")["first"][0].astype(np.float64)
    numpy_distance = {
        "l2": lambda X: np.linalg.norm(X - q, axis=1),
        "cosine": lambda X: _cosine_distance(q, X),
        "ip": lambda X: -(X @ q),
    }
    out = {}
    for metric in ("l2", "cosine", "ip"):
        preds = json.loads(
            cli("classify", img, "--stage", "first", "--k", "5", "--exact", "--metric", metric, "--json").stdout
        )
        out[metric] = [n["distance"] for n in preds[0]["neighbors"]]
        assert out[metric] == sorted(out[metric])
        # each neighbor's distance is numpy's on the query's and the neighbor's pixels; stage first is
        # stored as halfvec (11-bit mantissa), which moves these distances by up to about 4e-4 relative
        X = store.embed([syn_data / n["source"] for n in preds[0]["neighbors"]], "first")["first"]
        expected = numpy_distance[metric](X.astype(np.float64))
        assert out[metric] == pytest.approx(expected.tolist(), rel=2e-3), metric
    assert all(d < 0 for d in out["ip"])  # pgvector's <#> is the negative inner product


def test_neighbor_grid_has_k_plus_one_tiles_per_stage(cli, stored, syn_data, tmp_path, db_url):
    img = syn_data / "test" / "red-circle" / "0000.png"
    out = tmp_path / "grid.png"
    meta = json.loads(
        cli("neighbors", img, "--stage", "first,origin", "--k", "4", "--out", out, "--json", *stored).stdout
    )
    assert meta["columns"] == 5 and meta["stages"] == ["first", "origin"]
    assert all(len(meta["rows"][s]) == 4 for s in meta["stages"])
    with Image.open(out) as grid:
        grid.load()
        assert grid.size == ((4 + 1) * TILE, 2 * (TILE + CAPTION))
        arr = np.asarray(grid.convert("RGB"))
    # each row: the query, then the images of the neighbors the JSON names, in its order, each read
    # from its file here and scaled to the tile
    with psycopg.connect(db_url) as conn:
        source = dict(conn.execute("SELECT id, source FROM images").fetchall())
    for row, stage in enumerate(meta["stages"]):
        files = [img] + [syn_data / source[n["image_id"]] for n in meta["rows"][stage]]
        for col, path in enumerate(files):
            y, x = row * (TILE + CAPTION), col * TILE
            with Image.open(path) as want:
                expected = np.asarray(want.convert("RGB").resize((TILE - 4, TILE - 4), Image.Resampling.NEAREST))
            assert np.array_equal(arr[y + 2 : y + TILE - 2, x + 2 : x + TILE - 2], expected), (stage, col, path)


def test_neighbor_grid_rereads_cifar_pixels(cli, tmp_path):
    from archives import write_cifar_archive

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    arch = write_cifar_archive(
        tmp_path / "c.tar.gz",
        {"data": data, "labels": [i % 10 for i in range(20)]},
        {"data": data[:2], "labels": [0, 1]},
        [f"c{i}" for i in range(10)],
    )
    cli("ingest", "--stage", "first", "--data", arch, "--workers", "0")
    q = tmp_path / "q.png"
    Image.fromarray(data[3].reshape(3, 32, 32).transpose(1, 2, 0)).save(q)
    meta = json.loads(
        cli("neighbors", q, "--stage", "first", "--k", "2", "--out", tmp_path / "g.png", "--exact", "--json").stdout
    )
    assert meta["rows"]["first"][0]["distance"] == pytest.approx(0.0, abs=1e-5)


def test_experiment_fills_its_table_and_a_full_scan_index_agrees_with_exact(cli, db_url, syn_data, tmp_path):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    args = ["--sizes", "20,40", "--queries", "10", "--probes", "1,2", "--ef-search", "10", "--out", tmp_path / "rq.png"]
    out = json.loads(cli("experiment", "search", "--stage", "first", *args, "--json").stdout)
    exact = [r for r in out["rows"] if r["method"] == "exact"]
    assert [r["size"] for r in exact] == [20, 40]
    assert all(r["recall_at_1"] == 1.0 and r["recall_at_10"] == 1.0 for r in exact)  # the reference rows
    # at 20 and 40 rows ivfflat has one list, so any probe count scans everything: it is an exact
    # search by the index operator, and must agree with the exact scan (a wrong truth would not)
    full = [r for r in out["rows"] if r["method"] == "ivfflat"]
    assert full and all(r["params"]["lists"] == 1 for r in full)
    assert all(r["recall_at_1"] == 1.0 for r in full), full
    assert {r["method"] for r in out["rows"]} == {"exact", "ivfflat", "hnsw"}
    with psycopg.connect(db_url) as c:
        n = c.execute(
            "SELECT count(*) FROM report_experiments WHERE experiment_id = %s", (out["experiment_id"],)
        ).fetchone()[0]
    assert n == len(out["rows"]) == 2 * (1 + 2 + 1)
    Image.open(tmp_path / "rq.png").verify()
    too_big = cli("experiment", "search", "--stage", "first", "--sizes", "1000", expect=2)
    assert "must fit" in too_big.output
