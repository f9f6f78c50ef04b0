"""The scale data set (bench/scale_data.py) and the index defaults chosen from the stored size."""

import hashlib
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
from conftest import exact_ids
from PIL import Image

from bench.scale import SAMPLE_EVERY
from bench.scale_data import make
from clipvdb import STAGES, synthetic
from clipvdb.sources import open_source


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "scale.json"
    }


def test_the_scale_set_carries_labels_and_is_deterministic(tmp_path):
    src = synthetic.generate(tmp_path / "src", {"train": 6, "test": 2})
    info = make(src, tmp_path / "a", total=180, seed=7, workers=1)
    assert info["originals"] == 60 and info["copies_per_original"] == 2 and info["train_images"] == 180
    a = open_source(tmp_path / "a")
    items = a.items("train")
    assert len(items) == 180 and len(a.items("test")) == 20
    for it in items:  # every copy sits in (is labelled as) its source image's class
        _, cls, _, name = it.key.split("/")
        assert a.classes[it.label] == cls and (src / "train" / cls / (Path(name).stem + ".png")).is_file()
    assert all("/base/" in it.key for it in items[:60])  # --limit 60 takes the originals
    copy = Image.open(tmp_path / "a" / items[60].key)
    assert copy.size == (32, 32) and copy.format == "JPEG"
    base = np.asarray(Image.open(tmp_path / "a" / items[0].key).convert("RGB"), dtype=np.float32)
    assert np.abs(np.asarray(copy.convert("RGB"), dtype=np.float32) - base).mean() > 1.0  # changed
    make(src, tmp_path / "b", total=180, seed=7, workers=2)
    make(src, tmp_path / "c", total=180, seed=8, workers=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_the_scale_bench_runs_end_to_end_on_small_sizes(tmp_path):
    from bench.scale import main

    src = synthetic.generate(tmp_path / "src", {"train": 20, "test": 3})
    out = tmp_path / "scale.json"
    result = main(
        ["--data", str(src), "--scale-data", str(tmp_path / "scale"), "--sizes", "200,400", "--out", str(out)]
        + ["--clip-images", "60"]
    )
    for stage, b in result["clip_bytes"]["stages"].items():
        # a halfvec per image at least, in the stage's table, and the image rows beside it
        assert b["tables"][f"embeddings_{stage}"] > b["dim"] * 2 and b["tables"]["images"] > 0, b
        assert b["bytes_per_image"] >= sum(b["tables"].values()) - 1e-6
    assert [r["stored"] for r in result["sizes"]] == [200, 400]
    # the sampled queries' true nearest stored images, by numpy over the files decoded here: at these
    # sizes the default index scans every row (at least 1,000), so each found neighbor is the true one
    scale = open_source(tmp_path / "scale")

    def pixels(items) -> np.ndarray:
        return np.stack([np.asarray(Image.open(it.path).convert("RGB"), dtype=np.float64).ravel() for it in items])

    queries = pixels(scale.items("test")[::SAMPLE_EVERY])
    for r in result["sizes"]:
        assert r["ingest"]["total"] == r["stored"] == r["bytes"]["rows"]
        stored = pixels(scale.items("train")[: r["stored"]])
        assert r["found"] == exact_ids(stored, queries, list(range(len(stored))))
        assert r["recall_sample"] == len(queries) == 3
        assert r["recall_at_1"] == 1.0
        assert r["ingest_run"]["client_rss"] > 10 * 2**20 and r["ingest_run"]["server_rss"] > 0
        assert r["bytes"]["heap_bytes_per_row"] > 3072 * 2  # a halfvec(3072) row at least
    assert json.loads(out.read_text())["sizes"][1]["stored"] == 400


def test_projected_defaults_follow_the_rows():
    from clipvdb import indexes

    # up to 100,000 rows: lists = rows/100 and probes = lists/20 (5 % of the rows scanned)
    assert indexes.ideal_lists(50_000, projected=True) == 500
    assert indexes.default_probes(500, projected=True, rows=50_000) == 25
    assert indexes.ideal_lists(100_000, projected=True) == 1000
    assert indexes.default_probes(1000, projected=True, rows=100_000) == indexes.SQRT_PROBES
    # above: lists ~ sqrt(rows) and fixed probes, so a query scans ~sqrt(rows) rows
    lists_1m = indexes.ideal_lists(1_000_000, projected=True)
    assert lists_1m == int(1000 * 100_000**0.5 / 100)
    assert indexes.default_probes(lists_1m, projected=True, rows=1_000_000) == indexes.SQRT_PROBES
    scanned = {n: indexes.SQRT_PROBES * n / indexes.ideal_lists(n, projected=True) for n in (200_000, 800_000)}
    assert 1.9 < scanned[800_000] / scanned[200_000] < 2.1  # 4x the rows, 2x the scan
    # on Citus the rule reads the rows per shard: 32 shards of 31,250 rows stay on lists/20
    assert indexes.default_probes(312, projected=True, rows=1_000_000, shards=32) == 16
    # the default kind: ivfflat up to HNSW_FROM_ROWS rows per index, hnsw over the projection above
    assert indexes.default_index(STAGES["first"], 100_000) == ("ivfflat", {"project": 64})
    kind, params = indexes.default_index(STAGES["first"], 1_000_000)
    assert kind == "hnsw" and params == {"project": 64, **indexes.PROJECTED_HNSW}
    assert indexes.default_index(STAGES["first"], 1_000_000, shards=32)[0] == "ivfflat"  # 31,250 per shard
    assert indexes.default_index(STAGES["third"], 1_000_000) == ("ivfflat", {})
    assert "sqrt(rows)" in indexes.explain("ivfflat", {"project": 64, "lists": lists_1m}, 1_000_000)
    assert "5 % of the rows" in indexes.explain("ivfflat", {"project": 64, "lists": 500}, 50_000)


def test_the_projected_hnsw_widens_its_beam_by_the_rows_per_distinct_vector():
    from clipvdb import config, indexes

    base, top = config.PROJECTED_EF_SEARCH, config.PROJECTED_EF_SEARCH_MAX
    assert indexes.projected_ef_search(1_000_000, 1_000_000) == base
    # each image 20 times: the original, 7 identical copies of its flip, 12 near copies
    assert indexes.projected_ef_search(1_000_000, 900_000) == math.ceil(base * 10 / 9) < top
    assert indexes.projected_ef_search(1_000_000, 700_000) == top  # 20 rows, 14 vectors: capped
    assert indexes.projected_ef_search(200_000, 100_000) == top
    assert indexes.projected_ef_search(0, 0) == base


def test_a_growing_store_switches_to_hnsw_and_db_status_says_so(cli, syn_data, monkeypatch, db_url, tmp_path):
    """A simulated large N: the hnsw threshold lowered to 40 rows. 30 stored images get the
    projected ivfflat, 60 the projected hnsw with its own ef_search (config.PROJECTED_EF_SEARCH on
    distinct images; a dataset holding each image twice widens its own); a kind chosen by
    hand stays until `clipvdb index` without --kind gives the choice back to the rule."""
    from clipvdb import Store, config, indexes, ingest

    monkeypatch.setattr(indexes, "HNSW_FROM_ROWS", 40)
    monkeypatch.setattr(ingest, "BULK_LOAD_ROWS", 1)
    assert json.loads(cli("db", "status", "--json").stdout)["indexes"] == {}  # nothing stored yet
    out = json.loads(cli("ingest", "--stage", "first", "--data", syn_data, "--limit", "30", "--json").stdout)
    assert out["index"]["first"]["kind"] == "ivfflat" and out["index"]["first"]["default"] is True
    out = json.loads(cli("ingest", "--stage", "first", "--data", syn_data, "--json").stdout)
    first = out["index"]["first"]
    ef = config.PROJECTED_EF_SEARCH
    assert first["kind"] == "hnsw" and first["project"] == 64 and first["ef_search"] == ef, first
    status = json.loads(cli("db", "status", "--json").stdout)["indexes"]["first"]
    assert status["kind"] == "hnsw" and "log(rows)" in status["why"] and f"ef_search={ef}" in status["why"], status
    with Store(db_url, model="tiny") as store:
        searcher = store.searcher("first")
        assert ("hnsw.ef_search", str(ef)) in searcher.index_settings()
    # each stored image, queried, finds itself through the hnsw index
    evaluated = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--split", "train", "--json").stdout)
    assert evaluated["stages"]["first"]["n"] == 60 and evaluated["stages"]["first"]["accuracy_pct"] == 100.0
    cli("index", "--stage", "first", "--kind", "ivfflat", "--project", "8")
    assert "default" not in json.loads(cli("db", "status", "--json").stdout)["indexes"]["first"]["params"]
    rebuilt = json.loads(cli("index", "--stage", "first", "--json").stdout)[0]
    assert rebuilt["kind"] == "hnsw" and rebuilt["params"]["default"] is True
    assert "index: hnsw over a 64-d PCA projection" in cli("db", "status").stdout
    # a dataset of the same 60 images, each stored twice: 120 rows, 60 distinct vectors, each copy a
    # node of its graph
    twice = tmp_path / "twice"
    for f in (syn_data / "train").rglob("*.png"):
        for name in (f.name, f"copy-{f.name}"):
            (twice / "train" / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(f, twice / "train" / f.parent.name / name)
    again = json.loads(cli("ingest", "--stage", "first", "--data", twice, "--dataset", "again", "--json").stdout)
    first = again["index"]["first"]
    assert first["distinct_rows"] == 60 and first["ef_search"] == indexes.projected_ef_search(120, 60) > ef, first
    assert "2.00 rows per distinct vector" in cli("db", "status").stdout


def test_an_ivfflat_build_gets_the_memory_its_kmeans_needs():
    from clipvdb import indexes

    assert indexes.build_memory_mb("ivfflat", 500) == 1024  # the floor
    lists = indexes.ideal_lists(1_000_000, projected=True)
    # pgvector refused 3,162 lists with 1 GB ("memory required is 1969 MB")
    assert indexes.build_memory_mb("ivfflat", lists) * 2**20 > 1969 * 2**20
    # hnsw: the graph in memory; 1,000,000 rows of a 64-d projection made a 434 MB index: the floor
    assert indexes.build_memory_mb("hnsw", rows=1_000_000, dim=64) == 1024
    ten_million = indexes.build_memory_mb("hnsw", rows=10_000_000, dim=64)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    assert ten_million > 1024 or physical // 4 <= 1024  # more rows, more memory, where the machine has it
    assert ten_million <= max(1024, physical // 4)


def test_the_hnsw_build_memory_holds_pgvectors_graph(conn):
    """The memory build_memory_mb gives an hnsw build over 1,000,000 rows of the 64-d projection
    (bench.scale's largest), per row, given to a build of 10,000 such rows: pgvector itself says
    whether its graph fits ("hnsw graph no longer fits into maintenance_work_mem")."""
    from clipvdb import indexes

    rows, n = 1_000_000, 10_000
    per_row = indexes.build_memory_mb("hnsw", rows=rows, dim=64) * 2**20 / rows
    conn.execute(
        "CREATE TEMP TABLE graph AS SELECT (SELECT array_agg(random()::real) FROM generate_series(1, 64) "
        "WHERE i > 0)::vector(64)::halfvec(64) AS v FROM generate_series(1, %s) i",
        (n,),
    )
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute(f"SET maintenance_work_mem = '{math.ceil(per_row * n / 1024)}kB'")
    conn.execute("SET max_parallel_maintenance_workers = 0")
    params = indexes.PROJECTED_HNSW
    conn.execute(
        f"CREATE INDEX ON graph USING hnsw (v halfvec_l2_ops) "
        f"WITH (m = {params['m']}, ef_construction = {params['ef_construction']})"
    )
    assert conn.execute("SELECT count(*) FROM graph").fetchone() == (n,)
    assert not [m for m in notices if "no longer fits" in m], notices
