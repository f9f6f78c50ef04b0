"""The Store: the library's centre, used as a notebook would, with the tiny (no-torch) encoder."""

import subprocess
import sys

import numpy as np
import psycopg
import pytest
from PIL import Image

import clipvdb
from clipvdb import SearchSettings
from clipvdb.errors import SchemaError


def test_store_ingest_classify_evaluate_report_with_paths_pil_images_and_arrays(store, syn_data):
    result = store.ingest(syn_data, "all", split="train", workers=0)
    assert result.inserted == {"first": 60, "second": 60, "third": 60, "origin": 60}
    path = syn_data / "test" / "red-circle" / "0000.png"
    pil = Image.open(path).convert("RGB")
    preds = store.classify([str(path), pil, np.asarray(pil)], stage="first", settings=SearchSettings(k=3, exact=True))
    assert [p.stage for p in preds] == ["first"] * 3
    # the same pixels, three ways in: the same answer and the same neighbors
    assert preds[0].neighbors == preds[1].neighbors == preds[2].neighbors
    assert preds[0].nearest_distance <= preds[0].distance
    run = store.evaluate(syn_data, "first,second", SearchSettings(exact=True), split="test", workers=0)
    rows = store.report("report_accuracy", run=run.run_id)
    assert {r["stage"]: r["correct"] for r in rows} == {n: t.correct for n, t in run.stages.items()}
    runs = store.report("report_runs", run=run.run_id)
    assert runs[0]["exact"] is True and runs[0]["metric"] == "l2" and runs[0]["storage"]["first"] == "halfvec(3072)"


def test_distance_summary_squares_the_plain_distance(store, syn_data):
    store.ingest(syn_data, "first", workers=0)
    run = store.evaluate(syn_data, "first", SearchSettings(exact=True), split="test", workers=0)
    with store.connection() as conn:
        d = np.array(
            [
                r[0]
                for r in conn.execute(
                    "SELECT nearest_distance FROM predictions WHERE run_id = %s", (run.run_id,)
                ).fetchall()
            ]
        )
    summary = {r["outcome"]: r for r in store.report("report_distance_summary", run=run.run_id)}
    assert summary["all"]["n"] == len(d) == summary["correct"]["n"] + summary["wrong"]["n"]
    assert summary["all"]["median"] == pytest.approx(np.median(d))
    assert summary["all"]["mean_squared"] == pytest.approx(np.mean(d**2))
    assert summary["all"]["median_squared"] == pytest.approx(np.median(d**2))


def test_stage_counts_follow_inserts_deletes_cascades_and_truncate(store, syn_data):
    store.ingest(syn_data, "first", workers=0)
    with store.connection() as conn:

        def counted():
            return conn.execute("SELECT coalesce(sum(n_rows), 0) FROM stage_counts WHERE stage = 'first'").fetchone()[0]

        def actual():
            return conn.execute("SELECT count(*) FROM embeddings_first").fetchone()[0]

        assert counted() == actual() == 60
        conn.execute("DELETE FROM images WHERE id IN (SELECT id FROM images ORDER BY id LIMIT 7)")  # cascades
        assert counted() == actual() == 53
        conn.execute("TRUNCATE embeddings_first CASCADE")
        assert counted() == actual() == 0
        conn.rollback()
        assert counted() == actual() == 60


def test_first_use_brings_the_schema_to_head_and_a_newer_schema_is_refused(empty_db_url, syn_data, capsys):
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
    with clipvdb.Store(empty_db_url, encoder=clipvdb.TinyEncoder()) as store:
        store.ingest(syn_data, "first", workers=0, limit=10)
    assert "bringing the database schema from nothing to revision" in capsys.readouterr().err
    with psycopg.connect(empty_db_url, autocommit=True) as c:
        c.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(SchemaError, match="newer than this clipvdb"):
        clipvdb.Store(empty_db_url).classify([str(syn_data / "test" / "red-circle" / "0000.png")], stage="first")


def test_head_revision_from_file_names_equals_alembics():
    from alembic.script import ScriptDirectory

    from clipvdb import db

    assert db.head_revision() == ScriptDirectory.from_config(db._alembic_config("")).get_current_head()


def test_cli_import_leaves_torch_out_and_piped_tables_are_plain(cli, syn_data):
    code = "import sys, clipvdb.cli, clipvdb.store, clipvdb.pipeline; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    out = cli("classify", syn_data / "test" / "white-dots" / "0000.png", "--stage", "first").output
    assert "━" not in out and "│" not in out  # no rich box drawing when not a terminal
    lines = out.splitlines()
    assert lines[0] == "predictions" and lines[1].split()[:3] == ["image", "stage", "class"]
    assert len(lines[2].split()) == len(lines[1].split())  # one row on one line
