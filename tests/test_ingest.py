"""Ingest: idempotent, resumable after an interruption or kill -9, bad files skipped and named;
--split and --strict through the CLI."""

import json

import numpy as np
import psycopg
import pytest
from PIL import Image

from clipvdb import synthetic
from clipvdb.errors import SkippedImagesError
from clipvdb.sources import open_source


def _rows(url, table="embeddings_first"):
    with psycopg.connect(url) as c:
        return c.execute(f"SELECT count(*), count(DISTINCT image_id) FROM {table}").fetchone()


def test_same_ingest_twice_leaves_the_same_rows(cli, db_url, syn_data):
    first = json.loads(cli("ingest", "--stage", "first", "--data", syn_data, "--json", "--workers", "0").stdout)
    assert first["inserted"] == {"first": 60} and first["already_stored"] == 0
    again = json.loads(cli("ingest", "--stage", "first", "--data", syn_data, "--json", "--workers", "0").stdout)
    assert again["inserted"] == {"first": 0} and again["already_stored"] == 60
    assert _rows(db_url) == (60, 60)
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT count(*) FROM images").fetchone()[0] == 60


def test_limit_takes_a_balanced_subset(cli, db_url, syn_data):
    out = json.loads(
        cli("ingest", "--stage", "first", "--data", syn_data, "--limit", "20", "--json", "--workers", "0").stdout
    )
    assert out["total"] == 20 and out["inserted"] == {"first": 20}
    with psycopg.connect(db_url) as c:
        per_label = c.execute("SELECT label, count(*) FROM images GROUP BY label ORDER BY label").fetchall()
    assert per_label == [(label, 2) for label in range(10)]  # two of each class, not the first 20 files


def test_interrupted_ingest_resumes_without_duplicates(db_url, syn_data, store):
    source = open_source(syn_data)
    calls = []

    def stop_after_first_batch(done, total):
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.ingest(source, "first", batch_size=16, workers=0, progress=stop_after_first_batch)
    assert _rows(db_url) == (16, 16)  # whole batches only
    result = store.ingest(source, "first", batch_size=16, workers=0)
    assert result.already_stored == 16 and result.inserted == {"first": 44}
    assert _rows(db_url) == (60, 60)


def test_bad_files_are_skipped_and_named(cli, db_url, tmp_path):
    data = synthetic.generate(tmp_path / "mixed", {"train": 2})
    cls = data / "train" / "red-circle"
    (cls / "empty.png").write_bytes(b"")
    (cls / "text.jpg").write_text("not an image")
    good = (cls / "0000.png").read_bytes()
    (cls / "truncated.png").write_bytes(good[: len(good) // 2])
    (cls / "README.txt").write_text("ignored")
    r = cli("ingest", "--stage", "first", "--data", data, "--json", "--workers", "0", expect=3)
    out = json.loads(r.stdout)
    reasons = {f["item"].split("/")[-1]: f["reason"] for f in out["failed"]}
    assert set(reasons) == {"empty.png", "text.jpg", "truncated.png"}
    assert "truncated" in reasons["truncated.png"] or "corrupt" in reasons["truncated.png"]
    assert out["inserted"] == {"first": 20}
    assert out["ignored"] == ["train/red-circle/README.txt"]
    assert "3 of 23 images were skipped" in r.output
    assert _rows(db_url) == (20, 20)


def test_strict_stops_at_the_first_bad_file(db_url, tmp_path, store):
    data = synthetic.generate(tmp_path / "strict", {"train": 1})
    (data / "train" / "red-circle" / "bad.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(SkippedImagesError, match="bad.png"):
        store.ingest(open_source(data), "first", workers=0, strict=True)


def test_nan_vectors_are_refused_and_the_rest_go_in(db_url, syn_data, monkeypatch, store):
    import clipvdb.pipeline as encoding

    real = encoding.first_stage_vectors

    def poisoned(pixels):
        out = real(pixels)
        out[0, 0] = np.nan
        return out

    monkeypatch.setattr(encoding, "first_stage_vectors", poisoned)
    result = store.ingest(open_source(syn_data), "first", batch_size=30, workers=0)
    assert len(result.failed) == 2 and all("NaN" in r for _, r in result.failed)
    assert _rows(db_url) == (58, 58)


def test_ingest_split_and_strict_through_the_cli(cli, db_url, syn_data, tmp_path):
    out = json.loads(
        cli("ingest", "--stage", "first", "--data", syn_data, "--split", "test", "--json", "--workers", "0").stdout
    )
    assert out["split"] == "test" and out["inserted"] == {"first": 20}
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT DISTINCT split FROM images").fetchall() == [("test",)]
    bad = tmp_path / "bad"
    (bad / "train" / "x").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(bad / "train" / "x" / "a.png")
    (bad / "train" / "x" / "b.png").write_bytes(b"not an image")
    strict = cli(
        "ingest", "--stage", "first", "--data", bad, "--strict", "--dataset", "bad", "--workers", "0", expect=3
    )
    assert "b.png" in strict.output and "--strict" in strict.output
