"""Bad input: the good images go in, each bad one is named with its reason, nothing else happens."""

import os

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from clipvdb import synthetic
from clipvdb.errors import ImageError, SpaceMismatchError
from clipvdb.images import load_image
from clipvdb.knn import KnnSearcher, SearchSettings
from clipvdb.sources import open_source
from clipvdb.stages import STAGES

NASTY = ["with space", "ünïcødé", "quote'd", 'dq"x', "semi;colon", "--dash", "'); DROP TABLE images; --"]


def _tables(url) -> set[str]:
    with psycopg.connect(url) as c:
        return {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_decompression_bomb_is_refused(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, optimize=True)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ImageError, match="pixel cap|decompression bomb"):
        load_image(bomb)


def test_cmyk_and_16_bit_grey(tmp_path):
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(cmyk)
    assert load_image(cmyk).mode == "RGB"
    r, g, b = load_image(cmyk).getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("name", NASTY)
def test_nasty_file_names_are_stored_verbatim(db_url, tmp_path, store, name):
    data = synthetic.generate(tmp_path / "d", {"train": 1})
    folder = data / "train" / "red-circle"
    os.rename(folder / "0000.png", folder / f"{name}.png")
    before = _tables(db_url)
    result = store.ingest(open_source(data), "first", workers=0)
    assert result.failed == [] and result.inserted == {"first": 10}
    with psycopg.connect(db_url) as c:
        stored = c.execute("SELECT source FROM images WHERE source LIKE 'train/red-circle/%'").fetchone()[0]
    assert stored == f"train/red-circle/{name}.png"
    assert _tables(db_url) == before


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\x00"), min_size=1, max_size=40
    ).filter(lambda s: s not in (".", ".."))
)
def test_any_class_folder_name_round_trips(db_url, tmp_path_factory, store, name):
    root = tmp_path_factory.mktemp("h")
    folder = root / "train" / name
    try:
        folder.mkdir(parents=True)
    except OSError:
        return  # a name this file system refuses cannot reach clipvdb
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(folder / "x.png")
    src = open_source(root)
    result = store.ingest(src, "first", workers=0, dataset=f"h{abs(hash(name))}")
    assert result.failed == []
    with psycopg.connect(db_url) as c:
        got = c.execute(
            "SELECT c.name FROM classes c JOIN datasets d ON d.id = c.dataset_id WHERE d.name = %s",
            (f"h{abs(hash(name))}",),
        ).fetchall()
    assert got == [(name,)]


def test_non_utf8_file_name_is_refused_with_a_clear_reason(db_url, tmp_path, store):
    data = synthetic.generate(tmp_path / "d", {"train": 1})
    folder = os.fsencode(data / "train" / "red-circle")
    os.rename(os.path.join(folder, b"0000.png"), os.path.join(folder, b"bad\xff.png"))
    result = store.ingest(open_source(data), "first", workers=0)
    assert result.inserted == {"first": 9}
    assert len(result.failed) == 1 and "not valid UTF-8" in result.failed[0][1]


def test_wrong_dimension_is_refused_before_any_sql(db_url, tmp_path, store):
    from clipvdb import db

    data = synthetic.generate(tmp_path / "d", {"train": 1})
    store.ingest(open_source(data), "first", workers=0)
    with db.connection(db_url) as conn:
        searcher = KnnSearcher(conn, STAGES["first"], ("pixels", "none"), 1, "train", SearchSettings())
        conn.commit()
        with pytest.raises(SpaceMismatchError, match="1024 dimensions.*3072"):
            searcher.search(conn, np.zeros((1, 1024), np.float32))
        # any statement would have opened a transaction on this (non-autocommit) connection
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_debug_shows_the_traceback(runner, db_url, monkeypatch, tmp_path):
    from clipvdb.cli import cli as group

    monkeypatch.setenv("CLIPVDB_DATABASE_URL", db_url)
    quiet = runner.invoke(group, ["classify", str(tmp_path / "nope.png"), "--stage", "first"])
    assert quiet.exit_code == 2 and "Traceback" not in quiet.output
    loud = runner.invoke(group, ["--debug", "classify", str(tmp_path / "nope.png"), "--stage", "first"])
    assert loud.exit_code == 1 and loud.exception is not None
    assert type(loud.exception).__name__ == "UsageError"
