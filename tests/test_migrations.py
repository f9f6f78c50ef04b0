"""Alembic migrations: round trip, advisory lock, and the frozen view copies match sql/."""

import dataclasses
import gzip
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector import HalfVector
from pgvector.psycopg import register_vector

from clipvdb import SearchSettings, Store, db
from clipvdb.reports import VIEWS
from clipvdb.stages import STAGES
from clipvdb.storage import StageRows

TABLES = {
    "datasets",
    "classes",
    "images",
    "embedding_spaces",
    "space_indexes",
    "space_projections",
    "eval_runs",
    "predictions",
    "embeddings_first",
    "embeddings_second",
    "embeddings_third",
    "embeddings_origin",
    "stage_counts",
    "clusterings",
    "cluster_members",
    "cluster_centres_first",
    "learned_maps",
    "learned_first",
}


def _relations(url: str) -> set[str]:
    with psycopg.connect(url) as c:
        rows = c.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(empty_db_url):
    assert db.current_revision(empty_db_url) is None
    assert db.upgrade(empty_db_url) == db.head_revision()
    assert TABLES | set(VIEWS) <= _relations(empty_db_url)
    assert db.downgrade(empty_db_url, "base") is None
    assert _relations(empty_db_url) <= {"alembic_version"}
    assert db.upgrade(empty_db_url) == db.head_revision()
    assert TABLES | set(VIEWS) <= _relations(empty_db_url)


def test_stage_columns_hold_vectors_of_any_width(db_url):
    """Every model's vectors share a stage's table; each space's index gives its rows a width."""
    with psycopg.connect(db_url) as c:
        rows = dict(
            c.execute(
                """SELECT c.relname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               WHERE c.relname LIKE 'embeddings_%' AND a.attname = 'embedding'"""
            ).fetchall()
        )
    assert rows == {f"embeddings_{s}": "halfvec" for s in ("first", "second", "third", "origin")}


def _first_stage_state(c) -> tuple[str, str, str, int]:
    """Column type, storage, index definition and TOAST bytes of embeddings_first."""
    return c.execute(
        """SELECT format_type(a.atttypid, a.atttypmod), a.attstorage,
                  (SELECT indexdef FROM pg_indexes WHERE indexname = 'embeddings_first_ann'),
                  pg_relation_size(t.reltoastrelid)
           FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid
           WHERE t.relname = 'embeddings_first' AND a.attname = 'embedding'"""
    ).fetchone()


def _seed_first_stage(c: psycopg.Connection, embeddings) -> None:
    """One dataset, class and stage-first space; an image and an embeddings_first row per vector."""
    c.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x')")
    c.execute("INSERT INTO classes VALUES (1, 0, 'a')")
    c.execute("INSERT INTO embedding_spaces (id, model, weights, stage, dim) VALUES (1, 'none', 'none', 'first', 3072)")
    for i, x in enumerate(embeddings):
        c.execute(
            "INSERT INTO images (id, dataset_id, split, label, source, sha256) VALUES (%s, 1, 'train', 0, %s, %s)",
            (i + 1, f"i{i}", bytes(32)),
        )
        c.execute("INSERT INTO embeddings_first VALUES (1, %s, 1, 'train', %s)", (i + 1, x))


def test_0004_moves_wide_stages_to_inline_halfvec_keeping_rows_and_index(empty_db_url):
    rng = np.random.default_rng(0)
    X = rng.random((40, 3072), dtype=np.float32)
    db.upgrade(empty_db_url, "0003")
    with psycopg.connect(empty_db_url) as c:
        register_vector(c)
        _seed_first_stage(c, X)
        # the index as revision 0003's code built it: an expression over a halfvec cast
        c.execute(
            "CREATE INDEX embeddings_first_ann ON embeddings_first USING hnsw "
            "((embedding::halfvec(3072)) halfvec_l2_ops) WITH (m = 8, ef_construction = 32)"
        )
        before = _first_stage_state(c)
    assert before[0] == "vector(3072)" and before[3] > 0  # 12 KB rows are TOASTed

    db.upgrade(empty_db_url, "0014")  # the last revision before stage columns took every width
    with psycopg.connect(empty_db_url) as c:
        register_vector(c)
        kind, storage, indexdef, toast_bytes = _first_stage_state(c)
        stored = np.stack(
            [
                db.as_array(r[0])
                for r in c.execute("SELECT embedding FROM embeddings_first ORDER BY image_id").fetchall()
            ]
        )
        c.execute("INSERT INTO embeddings_first VALUES (1, 1, 1, 'train', %s) ON CONFLICT DO NOTHING", (X[0],))
    assert (kind, storage) == ("halfvec(3072)", "p")
    assert "USING hnsw (embedding halfvec_l2_ops) WITH (m='8', ef_construction='32')" in indexdef
    assert toast_bytes == 0  # in line: nothing TOASTed
    np.testing.assert_array_equal(stored, X.astype(np.float16).astype(np.float32))

    db.downgrade(empty_db_url, "0003")
    with psycopg.connect(empty_db_url) as c:
        kind, storage, indexdef, _ = _first_stage_state(c)
        assert c.execute("SELECT count(*) FROM embeddings_first").fetchone()[0] == len(X)
    assert (kind, storage) == ("vector(3072)", "e")
    assert "USING hnsw (((embedding)::halfvec(3072)) halfvec_l2_ops) WITH (m='8'" in indexdef


def _stage_state(c, stage: str) -> tuple[str, str, str, int, int]:
    """Column type, storage, ANN index definition, TOAST bytes and table bytes of a stage table."""
    return c.execute(
        """SELECT format_type(a.atttypid, a.atttypmod), a.attstorage,
                  (SELECT indexdef FROM pg_indexes WHERE indexname = t.relname || '_ann'),
                  pg_relation_size(t.reltoastrelid), pg_relation_size(t.oid)
           FROM pg_attribute a JOIN pg_class t ON t.oid = a.attrelid
           WHERE t.relname = %s AND a.attname = 'embedding'""",
        (f"embeddings_{stage}",),
    ).fetchone()


def test_0012_stores_the_1024_d_stages_as_inline_halfvec_keeping_rows_and_index(empty_db_url):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((60, 1024)).astype(np.float32)
    db.upgrade(empty_db_url, "0011")
    with psycopg.connect(empty_db_url) as c:
        register_vector(c)
        c.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x')")
        c.execute("INSERT INTO classes VALUES (1, 0, 'a')")
        c.execute(
            "INSERT INTO embedding_spaces (id, model, weights, stage, dim) VALUES (1, 'RN50', 'w', 'second', 1024)"
        )
        for i, x in enumerate(X):
            c.execute(
                "INSERT INTO images (id, dataset_id, split, label, source, sha256) VALUES (%s, 1, 'train', 0, %s, %s)",
                (i + 1, f"i{i}", bytes(32)),
            )
            c.execute("INSERT INTO embeddings_second VALUES (1, %s, 1, 'train', %s)", (i + 1, x))
        c.execute(
            "CREATE INDEX embeddings_second_ann ON embeddings_second "
            "USING ivfflat (embedding vector_l2_ops) WITH (lists = 3)"
        )
        before = _stage_state(c, "second")
    assert before[0] == "vector(1024)" and before[3] + before[4] >= len(X) * 4096  # 4 KB rows, TOASTed

    db.upgrade(empty_db_url, "0014")  # the last revision before stage columns took every width
    with psycopg.connect(empty_db_url) as c:
        register_vector(c)
        kind, storage, indexdef, toast_bytes, table_bytes = _stage_state(c, "second")
        stored = np.stack(
            [db.as_array(r[0]) for r in c.execute("SELECT embedding FROM embeddings_second ORDER BY image_id")]
        )
        centre = c.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'cluster_centres_second'::regclass AND attname = 'centre'"
        ).fetchone()[0]
    assert (kind, storage, centre) == ("halfvec(1024)", "p", "halfvec(1024)")
    assert "USING ivfflat (embedding halfvec_l2_ops) WITH (lists='3')" in indexdef
    assert toast_bytes == 0 and table_bytes <= len(X) * 4400  # in line, about half a page per row or less
    np.testing.assert_array_equal(stored, X.astype(np.float16).astype(np.float32))

    db.downgrade(empty_db_url, "0011")
    with psycopg.connect(empty_db_url) as c:
        kind, storage, indexdef, _, _ = _stage_state(c, "second")
        assert c.execute("SELECT count(*) FROM embeddings_second").fetchone()[0] == len(X)
    assert (kind, storage) == ("vector(1024)", "e")
    assert "USING ivfflat (embedding) WITH (lists='3')" in indexdef  # vector's default operator class: l2


def test_concurrent_upgrades_on_a_fresh_database(empty_db_url):
    """Two processes upgrade at once: the advisory lock serialises them; both succeed. The test holds
    the migration lock until both are waiting on it, so the two runs really overlap."""
    import time

    lock = 0x636C6970766462  # migrations/env.py's MIGRATION_LOCK_ID
    code = "import sys; from clipvdb import db; print(db.upgrade(sys.argv[1]))"

    def waiting() -> int:
        with psycopg.connect(empty_db_url) as c:
            return c.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]

    with psycopg.connect(empty_db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (lock,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, empty_db_url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        deadline = time.time() + 60
        while waiting() < 2 and time.time() < deadline:
            time.sleep(0.05)
        assert waiting() == 2, "both upgrades should be waiting on the migration lock"
        holder.execute("SELECT pg_advisory_unlock(%s)", (lock,))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [db.head_revision()] * 2
    with psycopg.connect(empty_db_url) as c:
        assert c.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1


def _frozen_views() -> dict[str, str]:
    """The newest frozen copy of each view across the migration files, in revision order."""
    latest: dict[str, str] = {}
    for path in sorted(db.migrations_dir().joinpath("versions").glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        latest.update(getattr(module, "VIEWS", {}))
    return latest


@pytest.mark.parametrize("view", sorted(p.stem for p in db.sql_dir().glob("*.sql")))
def test_sql_file_equals_newest_frozen_copy(view):
    frozen = _frozen_views()
    assert view in frozen, f"no migration creates {view}"
    assert (db.sql_dir() / f"{view}.sql").read_text() == frozen[view], (
        f"sql/{view}.sql changed: add a migration with the new frozen copy"
    )


def test_schema_check_names_the_fix(empty_db_url):
    from clipvdb.errors import SchemaError

    with pytest.raises(SchemaError, match="clipvdb db upgrade"):
        Store(empty_db_url, migrate=False).stored_stage_names()


def test_0009_turns_projections_into_halfvec_keeping_rows_and_index(empty_db_url):
    rng = np.random.default_rng(1)
    P = rng.random((30, 16), dtype=np.float32)
    db.upgrade(empty_db_url, "0008")
    with psycopg.connect(empty_db_url) as c:
        register_vector(c)
        _seed_first_stage(c, [HalfVector(np.zeros(3072))] * len(P))
        c.execute("ALTER TABLE projections_first ALTER COLUMN proj TYPE vector(16)")
        for i, p in enumerate(P):
            c.execute("INSERT INTO projections_first VALUES (1, %s, 1, 'train', %s)", (i + 1, p))
        c.execute(
            "CREATE INDEX projections_first_ann ON projections_first USING ivfflat (proj vector_l2_ops) "
            "WITH (lists = 3)"
        )

    def state(c):
        kind = c.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'projections_first'::regclass AND attname = 'proj'"
        ).fetchone()[0]
        indexdef = c.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'projections_first_ann'").fetchone()
        return (
            kind,
            indexdef[0] if indexdef else None,
            c.execute("SELECT count(*) FROM projections_first").fetchone()[0],
        )

    db.upgrade(empty_db_url, "0009")
    with psycopg.connect(empty_db_url) as c:
        kind, indexdef, rows = state(c)
        register_vector(c)
        stored = np.stack(
            [db.as_array(r[0]) for r in c.execute("SELECT proj FROM projections_first ORDER BY image_id").fetchall()]
        )
    assert kind == "halfvec(16)" and rows == len(P)
    np.testing.assert_array_equal(stored, P.astype(np.float16).astype(np.float32))
    assert "USING ivfflat (proj halfvec_l2_ops) WITH (lists='3')" in indexdef
    db.downgrade(empty_db_url, "0008")
    with psycopg.connect(empty_db_url) as c:
        kind, indexdef, rows = state(c)
    assert kind == "vector(16)" and rows == len(P)
    assert "USING ivfflat (proj vector_l2_ops) WITH (lists='3')" in indexdef or "USING ivfflat (proj) WITH" in indexdef


# A database built by clipvdb at schema revision 0014 (one encoder per stage table), dumped with
# pg_dump --inserts: 21 images of 3 classes (15 train, 6 test) at every stage of the `tiny` model,
# an hnsw index chosen by hand at stage second, the default projected ivfflat at stage first, an
# evaluate run over every stage (k 3), a k-means clustering at stage second and a PCA learned map at
# stage first. Made by `clipvdb ingest`, `index`, `evaluate`, `cluster fit` and `learn` of that
# revision's code on generated 32x32 images.
DUMP_0014 = Path(__file__).with_name("data") / "clipvdb-0014.sql.gz"
COUNTED = (
    "images",
    "eval_runs",
    "predictions",
    "run_neighbors",
    "clusterings",
    "cluster_members",
    "cluster_centres_second",
    "embeddings_first",
    "embeddings_second",
    "embeddings_third",
    "embeddings_origin",
    "projections_first",
    "learned_first",
    "stage_counts",
)


def _restore(url: str, dump: Path) -> None:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(gzip.decompress(dump.read_bytes()).decode())


def test_0015_moves_a_one_encoder_database_into_spaces_with_nothing_lost(empty_db_url):
    _restore(empty_db_url, DUMP_0014)
    assert db.current_revision(empty_db_url) == "0014"
    with psycopg.connect(empty_db_url) as c:
        before = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}
        records = dict(c.execute("SELECT stage, params FROM stage_indexes").fetchall())
        projection_basis = c.execute("SELECT components FROM stage_projections WHERE stage = 'first'").fetchone()[0]
        learned_matrix = c.execute("SELECT matrix FROM learned_maps WHERE stage = 'first'").fetchone()[0]
        vectors = {
            s: dict(c.execute(f"SELECT image_id, embedding::text FROM embeddings_{s}").fetchall())
            for s in ("first", "second", "third", "origin")
        }
    assert min(before.values()) > 0, before
    assert records["second"]["m"] == 4 and records["first"]["project"] == 64

    db.upgrade(empty_db_url, "0017")  # the Store below brings it to head
    with psycopg.connect(empty_db_url) as c:
        after = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}
        for s, stored in vectors.items():
            assert dict(c.execute(f"SELECT image_id, embedding::text FROM embeddings_{s}").fetchall()) == stored
        space = dict(c.execute("SELECT stage, id FROM embedding_spaces").fetchall())
        kept = dict(c.execute("SELECT space_id, params FROM space_indexes").fetchall())
        indexdefs = dict(c.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexname ~ '_ann_'").fetchall())
        basis = c.execute("SELECT components FROM space_projections WHERE space_id = %s", (space["first"],)).fetchone()
        matrix = c.execute("SELECT matrix FROM learned_maps WHERE space_id = %s", (space["first"],)).fetchone()
        storage = c.execute(
            "SELECT attstorage FROM pg_attribute "
            "WHERE attrelid = 'embeddings_second'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
    assert after == before
    assert kept[space["second"]] == records["second"] and kept[space["first"]] == records["first"]
    assert basis[0] == projection_basis and matrix[0] == learned_matrix
    assert storage == "p"  # rows stay in line
    second = indexdefs[f"embeddings_second_ann_{space['second']}"]
    assert "USING hnsw (((embedding)::halfvec(" in second and "m='4'" in second, second
    assert second.endswith(f"WHERE (space_id = {space['second']})")
    assert f"projections_first_ann_{space['first']}" in indexdefs and f"learned_first_ann_{space['first']}" in indexdefs

    # the migrated database answers: every stage's test images find the nearest training image an
    # exact search finds, through each space's own index
    store = Store(empty_db_url, model="tiny")
    with store.connection() as conn:
        for name in ("first", "second", "third", "origin"):
            searcher = store.searcher(name)
            stage = searcher.stage
            rows = conn.execute(
                f"SELECT image_id, embedding FROM embeddings_{name} WHERE split = 'test' ORDER BY image_id"
            ).fetchall()
            Q = np.stack([db.as_array(r[1]) for r in rows])
            train = conn.execute(
                f"SELECT image_id, embedding FROM embeddings_{name} WHERE split = 'train' ORDER BY image_id"
            ).fetchall()
            X = np.stack([db.as_array(r[1]) for r in train])
            truth = [train[j][0] for j in ((Q[:, None] - X[None]) ** 2).sum(-1).argmin(1)]
            neighbors, _ = searcher.search(conn, Q)
            conn.commit()
            assert [n[0].image_id for n in neighbors] == truth, name
            assert searcher.index_exists and stage.dim == X.shape[1]
        learned_searcher = store.searcher("first", SearchSettings(learned=True))
        assert learned_searcher.learned is not None and learned_searcher.learned.dims == 4
    store.close()

    db.downgrade(empty_db_url, "0014")
    with psycopg.connect(empty_db_url) as c:
        back = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in COUNTED}
        kinds = dict(c.execute("SELECT stage, kind FROM stage_indexes").fetchall())
        column = c.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'embeddings_third'::regclass AND attname = 'embedding'"
        ).fetchone()[0]
    # a downgrade keeps the vectors and runs; projections and learned images are made again on demand
    assert {t: n for t, n in back.items() if t not in ("projections_first", "learned_first")} == {
        t: n for t, n in before.items() if t not in ("projections_first", "learned_first")
    }
    assert kinds["second"] == "hnsw" and column == f"halfvec({len(next(iter(vectors['third'].values())).split(','))})"


def test_0015_downgrade_refuses_a_stage_of_two_widths(db_url):
    from conftest import FakeEncoder, load_vectors

    from clipvdb import catalog

    with db.connection(db_url) as conn:
        second = STAGES["second"]
        load_vectors(conn, second, np.ones((3, second.dim), dtype=np.float32))
        narrow = dataclasses.replace(second, dim=8)
        space = catalog.get_or_create_space(conn, narrow, type("Other", (FakeEncoder,), {"name": "other"})())
        ids = [r[0] for r in conn.execute("SELECT id FROM images ORDER BY id").fetchall()]
        StageRows(narrow, space.id, 1, "train").copy(conn, ids, np.ones((3, 8), dtype=np.float32))
        conn.commit()
    with pytest.raises(Exception, match="stage second holds vectors of 2 widths"):
        db.downgrade(db_url, "0014")
    assert db.current_revision(db_url) == db.head_revision()


# Two datasets in every space: a (20 training images of 10 classes) at every stage, evaluated on
# 10 test images, b (8 training images) beside it; stage second indexed hnsw by hand, the others the
# default (first: ivfflat over a 64-d projection); a PCA learned map and a k-means clustering at
# stage first. Made by `clipvdb ingest`, `index`, `evaluate`, `learn` and `cluster fit` of revision
# 0017's code on generated 32x32 images (tiny encoder).
DUMP_0017 = Path(__file__).with_name("data") / "clipvdb-0017.sql.gz"


def test_0018_gives_each_dataset_of_a_space_its_own_index_with_nothing_lost(empty_db_url):
    _restore(empty_db_url, DUMP_0017)
    assert db.current_revision(empty_db_url) == "0017"
    counted = (*COUNTED, "cluster_centres_first", "space_projections", "learned_maps")

    def counts(c) -> dict:
        return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in counted if t != "space_projections"}

    with psycopg.connect(empty_db_url) as c:
        before = counts(c)
        records = {r[0]: r[1:] for r in c.execute("SELECT space_id, kind, params FROM space_indexes").fetchall()}
        space = dict(c.execute("SELECT stage, id FROM embedding_spaces").fetchall())
        basis = c.execute("SELECT components FROM space_projections WHERE space_id = %s", (space["first"],)).fetchone()
        held = dict(c.execute("SELECT name, id FROM datasets").fetchall())
        rows = dict(c.execute("SELECT dataset_id, count(*) FROM embeddings_second GROUP BY 1").fetchall())
    assert sorted(held) == ["a", "b"] and rows == {held["a"]: 20, held["b"]: 8}, rows
    assert records[space["second"]][0] == "hnsw" and records[space["first"]][1]["project"] == 64

    db.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url) as c:
        assert counts(c) == before
        kept = {(r[0], r[1]): r[2:] for r in c.execute("SELECT space_id, dataset_id, kind, params FROM space_indexes")}
        names = {r[0]: r[1] for r in c.execute("SELECT indexname, indexdef FROM pg_indexes WHERE indexname ~ '_ann_'")}
        bases = c.execute(
            "SELECT dataset_id, components FROM space_projections WHERE space_id = %s", (space["first"],)
        ).fetchall()
    # one record and one index per space and dataset, with the space's kind and parameters
    assert set(kept) == {(sp, ds) for sp in space.values() for ds in held.values()}, kept
    for sp in space.values():
        for ds in held.values():
            kind, params = kept[(sp, ds)]
            assert kind == records[sp][0]
            assert {k: v for k, v in params.items() if k != "lists"} == {
                k: v for k, v in records[sp][1].items() if k != "lists"
            }
            table = "projections_first" if sp == space["first"] else f"embeddings_{_stage_of(space, sp)}"
            indexdef = names.pop(f"{table}_ann_{sp}_{ds}")
            assert f"WHERE ((space_id = {sp}) AND (dataset_id = {ds})" in indexdef, indexdef
    assert sorted(names) == [f"learned_first_ann_{space['first']}"], names  # the learned map's stays per space
    assert sorted(b[0] for b in bases) == sorted(held.values()) and all(b[1] == basis[0] for b in bases)

    # each dataset answers from its own rows, as an exact search over them does, reading its own index
    store = Store(empty_db_url, model="tiny")
    with store.connection() as conn:
        register_vector(conn)
        rng = np.random.default_rng(0)
        for name in ("first", "second", "third"):
            # every stored row of both datasets, moved a little: each dataset's own rows and the other's
            stored = conn.execute(f"SELECT embedding FROM embeddings_{name} ORDER BY image_id").fetchall()
            Q = np.stack([db.as_array(r[0]) for r in stored]).astype(np.float32)
            Q += rng.standard_normal(Q.shape).astype(np.float32) * 0.01 * Q.std()
            for ds_name, ds in held.items():
                train = conn.execute(
                    f"SELECT image_id, embedding FROM embeddings_{name} WHERE split = 'train' AND dataset_id = %s "
                    "ORDER BY image_id",
                    (ds,),
                ).fetchall()
                X = np.stack([db.as_array(r[1]) for r in train]).astype(np.float64)
                truth = [train[j][0] for j in ((Q[:, None] - X[None]) ** 2).sum(-1).argmin(1)]
                searcher = store.searcher(name, dataset=ds_name)
                neighbors, _ = searcher.search(conn, Q)
                conn.commit()
                assert [n[0].image_id for n in neighbors] == truth, (name, ds_name)
                assert searcher.index_exists, (name, ds_name)
    store.close()

    db.downgrade(empty_db_url, "0017")
    with psycopg.connect(empty_db_url) as c:
        back = counts(c)
        one = dict(c.execute("SELECT space_id, kind FROM space_indexes").fetchall())
        names = {r[0] for r in c.execute("SELECT indexname FROM pg_indexes WHERE indexname ~ '_ann_'")}
    # the first space's projections were made per dataset: they go, and its index with them
    assert {t: n for t, n in back.items() if t != "projections_first"} == {
        t: n for t, n in before.items() if t != "projections_first"
    }
    assert back["projections_first"] == 0 and one == {sp: records[sp][0] for sp in space.values()}
    assert f"embeddings_second_ann_{space['second']}" in names and f"embeddings_first_ann_{space['first']}" in names
    db.upgrade(empty_db_url)
    assert db.current_revision(empty_db_url) == db.head_revision()


RUN_VIEWS = (
    "report_accuracy",
    "report_accuracy_by_k",
    "report_timing",
    "report_confusion",
    "report_class_accuracy",
    "report_distance_summary",
    "report_distance_histogram",
    "report_runs",
)


def _view_rows(url: str) -> dict[str, list[tuple]]:
    """Every run view's rows, each row's columns sorted by name, the rows sorted."""
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as c:
        out = {}
        for view in RUN_VIEWS:
            rows = c.execute(f"SELECT * FROM {view}").fetchall()
            out[view] = sorted((tuple(sorted((k, str(v)) for k, v in r.items())) for r in rows), key=str)
    return out


def test_0020_keys_predictions_by_model_with_every_report_as_it_was(empty_db_url):
    _restore(empty_db_url, DUMP_0017)
    db.upgrade(empty_db_url, "0019")
    before = _view_rows(empty_db_url)
    with psycopg.connect(empty_db_url) as c:
        counts = {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("predictions", "run_neighbors")}
    assert all(before[v] for v in RUN_VIEWS if v != "report_accuracy_by_k") and counts["predictions"] > 0

    db.upgrade(empty_db_url)
    after = _view_rows(empty_db_url)
    with psycopg.connect(empty_db_url) as c:
        numbered = dict(c.execute("SELECT model_no, count(*) FROM predictions GROUP BY 1").fetchall())
        keys = dict(
            c.execute(
                "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE contype = 'p' AND conrelid::regclass::text IN ('predictions', 'run_neighbors')"
            ).fetchall()
        )
    assert numbered == {0: counts["predictions"]}
    assert keys["predictions"] == "PRIMARY KEY (run_id, model_no, stage, image_id)", keys
    assert keys["run_neighbors"] == "PRIMARY KEY (run_id, model_no, stage, image_id, rank)", keys
    # every view gives the same rows; the ones that gained columns name the run's model beside the stage
    for view in RUN_VIEWS:
        old = {tuple(c for c in row) for row in before[view]}
        gained = ("model", "weights", "model_no")
        new = {tuple(c for c in row if c[0] not in gained) for row in after[view]}
        assert new == {tuple(c for c in row if c[0] not in gained) for row in old}, view
    models = {dict(row)["model"] for row in after["report_confusion"]}
    assert models == {dict(row)["model"] for row in after["report_accuracy"]} and models

    db.downgrade(empty_db_url, "0019")
    assert _view_rows(empty_db_url) == before
    db.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url) as c:
        c.execute("UPDATE predictions SET model_no = 1 WHERE stage = 'second'")
    with pytest.raises(Exception, match=r"run\(s\) cover several models"):
        db.downgrade(empty_db_url, "0019")
    assert db.current_revision(empty_db_url) == db.head_revision()


def _stage_of(space: dict, sp: int) -> str:
    return next(stage for stage, i in space.items() if i == sp)
