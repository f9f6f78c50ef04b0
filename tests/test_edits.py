"""Data that lives: datasets listed, renamed and dropped; images deleted and relabelled by the paths
a user has on disk, with a dry run that touches nothing; the searches answer from what remains, with
the new labels; runs evaluated before say they are no longer current."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from clipvdb import Store, TinyEncoder, db
from clipvdb.edits import glob_regex
from clipvdb.errors import UsageError
from clipvdb.images import first_stage_pixels, first_stage_vectors, load_image
from clipvdb.stages import STAGES
from clipvdb.synthetic import CLASSES

FIRST = STAGES["first"]


@pytest.fixture
def data(syn_data, tmp_path, monkeypatch):
    """A copy of the generated set in ./data, the working directory its parent (paths as typed)."""
    root = tmp_path / "data"
    shutil.copytree(syn_data, root)
    monkeypatch.chdir(tmp_path)
    return root


def _rows(conn, table: str) -> int:
    return db.scalar(conn, f"SELECT count(*) FROM {table}")


def _keys(store: Store, split: str = "train") -> dict[str, int]:
    with store.connection() as conn:
        return dict(conn.execute("SELECT source, label FROM images WHERE split = %s", (split,)).fetchall())


def _vacuums(store: Store) -> dict[str, tuple[int, int]]:
    """Per stage-first table: how often it was vacuumed by hand, and its dead rows."""
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT relname, vacuum_count, n_dead_tup FROM pg_stat_user_tables WHERE relname LIKE '%\\_first'"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def _nearest(store: Store, data, queries: list) -> list[int]:
    """The stored image the default search answers each query with (k = 1, stage first)."""
    preds = store.classify(queries, stage="first", k=1)
    return [p.neighbors[0]["image_id"] for p in preds]


def _exact(store: Store, data, queries: list) -> list[int]:
    """The nearest stored training image of each query by numpy over the rows stored now."""
    with store.connection() as conn:
        rows = conn.execute("SELECT id, source FROM images WHERE split = 'train' ORDER BY id").fetchall()
    ids = np.array([r[0] for r in rows])
    X = first_stage_vectors(np.stack([first_stage_pixels(load_image(data / r[1])) for r in rows]))
    Q = first_stage_vectors(np.stack([first_stage_pixels(load_image(q)) for q in queries]))
    d = ((Q[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    return [int(ids[j]) for j in d.argmin(1)]


def test_glob_regex_keeps_stars_within_a_folder_and_reads_the_same_in_postgresql(conn):
    cases = {
        "train/cat/*.png": ["train/cat/0001.png", "train/cat/a.b.png"],
        "train/**/0001.png": ["train/cat/0001.png", "train/cat/sub/0001.png"],
        "train/ca?/000[12].png": ["train/cat/0001.png", "train/car/0002.png"],
        "train/dog/[!0]*": ["train/dog/1.png"],
        "train/a+b (1).png": ["train/a+b (1).png"],
    }
    misses = {
        "train/cat/*.png": ["train/cat/sub/0001.png", "train/cats/0001.png", "xtrain/cat/0001.png"],
        "train/ca?/000[12].png": ["train/cat/0003.png", "train/cart/0001.png"],
        "train/dog/[!0]*": ["train/dog/0001.png"],
        "train/a+b (1).png": ["train/aab (1).png", "train/a+b 1.png"],
    }
    for pattern, keys in cases.items():
        rx = glob_regex(pattern)
        for key in keys + misses.get(pattern, []):
            want = key in keys
            assert bool(re.match(rx, key)) is want, (pattern, key)
            assert conn.execute("SELECT %s ~ %s", (key, rx)).fetchone()[0] is want, (pattern, key)


def test_dataset_list_rename_and_drop(cli, data):
    cli("ingest", "--stage", "first", "--data", "data", "--dataset", "keep")
    cli("ingest", "--stage", "first", "--data", "data", "--dataset", "scratch")
    cli("ingest", "--stage", "first", "--data", "data", "--dataset", "scratch", "--split", "test")
    listed = {d["name"]: d for d in json.loads(cli("dataset", "list", "--json").stdout)}
    assert listed["keep"]["images"] == {"train": 60}
    assert listed["scratch"]["images"] == {"test": 20, "train": 60}
    assert listed["scratch"]["classes"] == 10

    out = cli("dataset", "rename", "keep", "scratch", expect=2).output
    assert "a dataset named 'scratch' exists already" in out and len(out.strip().splitlines()) == 1
    cli("dataset", "rename", "keep", "kept")

    dry = json.loads(cli("dataset", "drop", "scratch", "--dry-run", "--json").stdout)
    assert (dry["images"], dry["splits"], dry["vectors"]) == (80, {"test": 20, "train": 60}, {"first": 80})
    assert {d["name"] for d in json.loads(cli("dataset", "list", "--json").stdout)} == {"kept", "scratch"}
    refused = cli("dataset", "drop", "scratch", expect=2).output  # not a terminal: no prompt
    assert "confirm with --yes" in refused
    done = cli("dataset", "drop", "scratch", "--yes").output
    assert done.startswith("dropped 80 images of 'scratch'")
    listed = {d["name"]: d for d in json.loads(cli("dataset", "list", "--json").stdout)}
    assert set(listed) == {"kept"} and listed["kept"]["images"] == {"train": 60}
    status = json.loads(cli("db", "status", "--json").stdout)
    assert sum(sp["rows"] for sp in status["spaces"]) == 60  # the counts went with the rows


def test_delete_by_the_paths_on_disk_answers_only_from_the_rows_left(db_url, data):
    queries = sorted((data / "test").rglob("*.png"))
    with Store(db_url, encoder=TinyEncoder()) as store:
        store.ingest(data, stages="first")
        before = _keys(store)
        gone_class = CLASSES[0]
        nearest_before = _nearest(store, data, queries)

        dry = store.delete(
            paths=[f"./data/train/{gone_class}/*", str(data / "train" / CLASSES[1] / "0000.png")], dry_run=True
        )
        assert (dry.images, dry.splits, dry.vectors) == (7, {"train": 7}, {"first": 7})
        assert _keys(store) == before  # a dry run touches nothing

        with pytest.raises(UsageError, match=r"names no stored image .* stored keys look like 'train/"):
            store.delete(paths=["./data/train/nosuchclass/*"])
        assert _keys(store) == before  # a path that names nothing stops the whole edit

        vacuums = _vacuums(store)
        done = store.delete(
            paths=[f"./data/train/{gone_class}/*", str(data / "train" / CLASSES[1] / "0000.png")], vacuum=True
        )
        assert (done.images, done.vectors) == (7, {"first": 7})
        # asked to, the stage's tables are vacuumed at once: no dead entry left in them or their indexes
        assert done.vacuumed == ["embeddings_first", "projections_first", "learned_first"]
        assert done.not_vacuumed is None
        after = _vacuums(store)
        assert all(after[t][0] == vacuums[t][0] + 1 and after[t][1] == 0 for t in done.vacuumed), (vacuums, after)
        left = _keys(store)
        assert set(before) - set(left) == {f"train/{gone_class}/{i:04d}.png" for i in range(6)} | {
            f"train/{CLASSES[1]}/0000.png"
        }
        with store.connection() as conn:
            assert _rows(conn, "embeddings_first") == len(left) == 53
        nearest = _nearest(store, data, queries)
        assert nearest == _exact(store, data, queries)
        assert nearest != nearest_before  # the deleted class was some query's nearest before

        with pytest.raises(UsageError, match="choose the images"):
            store.delete()


def test_relabel_files_and_a_csv_and_the_searches_answer_with_the_new_class(cli, db_url, data):
    cli("ingest", "--stage", "first", "--data", "data")
    target, source_class = CLASSES[2], CLASSES[3]
    moved = f"data/train/{source_class}/000[01].png"
    dry = json.loads(cli("relabel", moved, target, "--dry-run", "--json").stdout)
    assert (dry["images"], dry["relabelled"]) == (2, {target: {source_class: 2}})
    with Store(db_url, encoder=TinyEncoder()) as store:
        label = {name: i for i, name in enumerate(store.dataset().classes)}
        assert _keys(store)[f"train/{source_class}/0000.png"] == label[source_class]

        out = cli("relabel", moved, "nosuchclass", expect=2).output
        assert "has no class 'nosuchclass'" in out and len(out.strip().splitlines()) == 1

        line = cli("relabel", moved, target).output
        assert line.startswith(f"relabelled 2 images of 'data' (train 2); to {target} from {source_class} 2")
        keys = _keys(store)
        assert keys[f"train/{source_class}/0000.png"] == keys[f"train/{source_class}/0001.png"] == label[target]
        assert keys[f"train/{source_class}/0002.png"] == label[source_class]
        # a stored image as the query: its own row answers, with its new class
        pred = store.classify([data / "train" / source_class / "0000.png"], stage="first", k=1)[0]
        assert pred.predicted_class == target

        again = cli("relabel", moved, target).output
        assert "relabelled 0 images" in again and "2 had that class already" in again

        table = data.parent / "fixes.csv"
        table.write_text(
            f"source,class\ndata/train/{source_class}/0000.png,{source_class}\ntrain/{CLASSES[4]}/0005.png,{target}\n"
        )
        cli("relabel", "--csv", str(table))
        keys = _keys(store)
        assert keys[f"train/{source_class}/0000.png"] == label[source_class]
        assert keys[f"train/{CLASSES[4]}/0005.png"] == label[target]

        bad = data.parent / "bad.csv"
        bad.write_text("data/train/x.png\n")
        assert (
            "row 1 is 'data/train/x.png'; each row is source,class"
            in cli("relabel", "--csv", str(bad), expect=2).output
        )


def test_runs_evaluated_before_an_edit_are_no_longer_current(cli, db_url, data):
    cli("ingest", "--stage", "first", "--data", "data")
    first = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--json").stdout)["run_id"]

    def current() -> dict[int, bool]:
        with Store(db_url, encoder=TinyEncoder()) as store:
            return {r.run_id: r.current for r in store.runs()}

    assert current() == {first: True}
    cli("ingest", "--stage", "first", "--data", "data")  # nothing new: the stored set is the same
    assert current() == {first: True}
    out = cli("delete", f"data/train/{CLASSES[5]}/0003.png").output
    assert "1 run evaluated before is no longer current" in out
    assert current() == {first: False}
    second = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--json").stdout)["run_id"]
    assert current() == {first: False, second: True}
    cli("relabel", f"data/train/{CLASSES[5]}/0004.png", CLASSES[6])
    assert current() == {first: False, second: False}
    # new images stored make the runs before them stale too
    shutil.copyfile(data / "train" / CLASSES[0] / "0000.png", data / "train" / CLASSES[0] / "extra.png")
    third = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--json").stdout)["run_id"]
    cli("ingest", "--stage", "first", "--data", "data")
    assert current()[third] is False


def test_the_pages_say_which_runs_answered_from_data_that_has_changed(cli, db_url, data):
    from clipvdb.web import create_app

    cli("ingest", "--stage", "first", "--data", "data")
    old = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--json").stdout)["run_id"]
    cli("delete", f"data/train/{CLASSES[7]}/0001.png")
    new = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--json").stdout)["run_id"]
    with Store(db_url, encoder=TinyEncoder()) as store:
        client = create_app(store).test_client()
        runs = client.get("/runs").get_data(as_text=True)
        assert runs.count("(data changed since)") == 1
        assert 'id="not-current"' in client.get(f"/runs/{old}").get_data(as_text=True)
        assert 'id="not-current"' not in client.get(f"/runs/{new}").get_data(as_text=True)


def _insert_open(conn, space, rows: np.ndarray, prefix: str) -> list[int]:
    """Another ingest's batch in the table, its projection and the index, not committed."""
    from clipvdb import projection
    from clipvdb.catalog import upsert_images
    from clipvdb.storage import StageRows

    keys = [(f"{prefix}{i}", 1, bytes(32)) for i in range(len(rows))]
    found = upsert_images(conn, 1, "train", keys)
    ids = [found[k[0]] for k in keys]
    slice_ = StageRows(FIRST, space.id, 1, "train")
    slice_.copy(conn, ids, rows)
    projection.add(conn, slice_, projection.load(conn, space, 1), ids, rows)
    return ids


def test_under_a_projected_hnsw_deletes_and_relabels_answer_exactly_with_inserts_in_flight(db_url):
    """4,000 stored vectors (of rank 12) under the projected hnsw (stage first's default above 100,000 rows). A
    tenth is deleted while another connection holds a batch of new rows uncommitted in the same table
    and index (the delete waits for that batch's commit, on the row counts, and goes on), 200 are
    relabelled and both tables vacuumed while a second batch is open: the searches then answer
    exactly as numpy does over the rows that remain and the new ones, with the new labels."""
    import threading

    import psycopg
    from conftest import load_vectors, space_at
    from faults_helpers import lock_waiters, wait_for

    from clipvdb import indexes
    from clipvdb.knn import KnnSearcher, SearchSettings

    rng = np.random.default_rng(7)
    basis = rng.random((12, FIRST.dim), dtype=np.float32) / 12

    def near(n: int) -> np.ndarray:
        """Rank-12 rows: the 64-d projection keeps all of them, so the default path's answers are exact."""
        return (rng.random((n, 12), dtype=np.float32) @ basis).astype(np.float32)

    X = near(4000)
    with db.connection(db_url) as conn:
        ids = load_vectors(conn, FIRST, X)
        space = space_at(conn, FIRST)
        indexes.build(conn, space, 1, "hnsw", {"project": 64})
    label = {i: j % 2 for j, i in enumerate(ids)}  # load_vectors: a, b by row
    gone = {int(i) for i in rng.choice(ids, 400, replace=False)}
    moved = [i for i in ids if i not in gone][:200]
    with (
        Store(db_url, encoder=TinyEncoder()) as store,
        db.connection(db_url) as first,
        db.connection(db_url) as second,
    ):
        A = near(150)
        a_ids = _insert_open(first, space, A, "a")
        done: list = []
        deleting = threading.Thread(target=lambda: done.append(store.delete("d", ids=sorted(gone))))
        deleting.start()
        wait_for(lambda: done or lock_waiters(db_url), "the delete to finish or wait for the open batch")
        first.commit()
        deleting.join(60)
        assert done and done[0].vectors == {"first": 400}

        B = near(150)
        b_ids = _insert_open(second, space, B, "b")
        edit = store.relabel("d", "b", ids=moved)
        assert edit.images == sum(label[i] == 0 for i in moved) and edit.unchanged == sum(label[i] == 1 for i in moved)
        with psycopg.connect(db_url, autocommit=True) as vac:
            vac.execute("VACUUM embeddings_first")
            vac.execute("VACUUM projections_first")
        second.commit()

    label |= {i: 1 for i in moved} | {i: 1 for i in a_ids + b_ids}
    keep = [j for j, i in enumerate(ids) if i not in gone]
    stored_ids = [ids[j] for j in keep] + a_ids + b_ids
    stored = np.concatenate([X[keep], A, B])
    Q = near(60)
    d = ((Q[:, None, :].astype(np.float64) - stored[None, :, :]) ** 2).sum(-1)
    truth = [int(stored_ids[j]) for j in d.argmin(1)]
    with db.connection(db_url) as conn:
        searcher = KnnSearcher(conn, FIRST, ("pixels", "none"), 1, "train", SearchSettings())
        conn.commit()
        assert searcher.projection is not None  # the projected hnsw answers
        found, _ = searcher.search(conn, Q)
    assert not {n[0].image_id for n in found} & gone
    assert [n[0].image_id for n in found] == truth
    assert [n[0].label for n in found] == [label[i] for i in truth]


def test_an_index_the_stored_rows_drifted_from_is_due_and_the_next_ingest_rebuilds_it(cli, db_url, data):
    from clipvdb.indexes import IndexInfo

    info = IndexInfo("first", "ivfflat", {}, 0, True, 0, None, built_rows=1000)
    assert all(info.due(rows) is None for rows in (801, 1000, 1199))
    assert all("built on 1,000 rows" in (info.due(rows) or "") for rows in (800, 1200, 5000))

    def built() -> int:
        with db.connection(db_url) as conn:
            return db.scalar(conn, "SELECT built_rows FROM space_indexes")

    cli("ingest", "--stage", "first", "--data", "data")
    assert built() == 60
    gone = [f"data/train/{c}/*" for c in CLASSES[8:]]
    out = cli("delete", *gone).output
    assert "the index of first in 'data': built on 60 rows, 48 stored (0.80x): the next ingest rebuilds it" in out
    status = json.loads(cli("db", "status", "--json").stdout)
    assert "due for a rebuild" in status["spaces"][0]["why"]
    for c in CLASSES[8:]:  # the files go too, so that the next ingest adds nothing back
        shutil.rmtree(data / "train" / c)
    result = json.loads(cli("ingest", "--stage", "first", "--data", "data", "--json").stdout)
    assert result["inserted"] == {"first": 0} and result["index"]["first"]
    assert built() == 48
    status = json.loads(cli("db", "status", "--json").stdout)
    assert "due for a rebuild" not in status["spaces"][0]["why"]


def test_a_drop_while_an_evaluate_runs_on_another_dataset_loses_nothing_of_either(cli, db_url, data):
    """Both held at a known point, then let go together: an evaluate of dataset a waits to store its
    first predictions (the test holds predictions in SHARE mode), a drop of dataset b waits on the
    same lock; once it is released both finish: a's run is whole, b is gone to its last row."""
    import os
    import subprocess
    import threading

    from faults_helpers import clipvdb, lock_waiters, wait_for

    cli("ingest", "--stage", "first", "--data", "data", "--dataset", "a")
    cli("ingest", "--stage", "first", "--data", "data", "--dataset", "b")
    cli("evaluate", "--stage", "first", "--data", "data", "--dataset", "b")
    earlier = json.loads(cli("evaluate", "--stage", "first", "--data", "data", "--dataset", "a", "--json").stdout)
    env = {**os.environ, "CLIPVDB_DATABASE_URL": db_url}
    with db.connection(db_url) as holder:
        holder.execute("LOCK TABLE predictions IN SHARE MODE")
        evaluating = subprocess.Popen(
            clipvdb("evaluate", "--stage", "first", "--data", "data", "--dataset", "a", "--json"),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        wait_for(lambda: lock_waiters(db_url), "the evaluate to wait to store its predictions")
        dropped: list = []
        with Store(db_url, encoder=TinyEncoder()) as store:
            dropping = threading.Thread(target=lambda: dropped.append(store.drop_dataset("b")))
            dropping.start()
            wait_for(lambda: len(lock_waiters(db_url)) >= 2, "the drop to wait on the same lock")
            holder.commit()  # both go on at once
            out, err = evaluating.communicate(timeout=120)
            dropping.join(120)
    assert evaluating.returncode == 0, err
    run = json.loads(out)
    assert dropped and dropped[0].images == 80 and dropped[0].runs_dropped == 1  # 60 stored, 20 evaluated
    with db.connection(db_url) as conn:

        def one(sql: str, *params):
            return conn.execute(sql, params).fetchone()[0]

        assert one("SELECT count(*) FROM predictions WHERE run_id = %s", run["run_id"]) == 20
        assert one("SELECT status FROM eval_runs WHERE id = %s", run["run_id"]) == "complete"
        assert one("SELECT count(*) FROM predictions WHERE run_id = %s", earlier["run_id"]) == 20
        assert one("SELECT count(*) FROM eval_runs") == 2
        assert one("SELECT array_agg(name) FROM datasets") == ["a"]
        assert one("SELECT count(*) FROM images") == 80  # a's 60 stored and 20 evaluated
        assert one("SELECT count(*) FROM embeddings_first") == 60
        assert one("SELECT count(*) FROM predictions") == 40
    assert run["stages"]["first"]["n"] == 20
