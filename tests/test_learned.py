"""The learned metric: fitted on the training split only, stored, kept current, searched with --learned."""

import json

import numpy as np
import psycopg
import pytest
from conftest import space_at

from clipvdb import SearchSettings, catalog, db, learned
from clipvdb.errors import EmptyStageError, UsageError
from clipvdb.stages import STAGES


def test_learn_then_search_the_learned_space(cli, db_url, syn_data):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    fitted = json.loads(cli("learn", "--stage", "first", "--dims", "8", "--seconds", "2", "--json").stdout)
    assert fitted["dims"] == 8 and fitted["fitted_rows"] == 60 and fitted["method"] == "nca"
    raw = json.loads(cli("evaluate", "--stage", "first", "--data", syn_data, "--json", "--workers", "0").stdout)
    lrn = json.loads(
        cli("evaluate", "--stage", "first", "--data", syn_data, "--learned", "--json", "--workers", "0").stdout
    )
    acc = json.loads(cli("report", "--run", lrn["run_id"], "--view", "report_accuracy", "--json").stdout)
    assert acc["report_accuracy"][0]["space"] == "learned"
    assert (
        json.loads(cli("report", "--run", raw["run_id"], "--view", "report_accuracy", "--json").stdout)[
            "report_accuracy"
        ][0]["space"]
        == "raw"
    )
    runs = json.loads(cli("report", "--run", lrn["run_id"], "--view", "report_runs", "--json").stdout)
    assert runs["report_runs"][0]["params"]["learned"]["first"]["dims"] == 8
    # classify in the learned space: distances are the learned ones, not the raw ones
    img = syn_data / "test" / "red-circle" / "0000.png"
    p_raw = json.loads(cli("classify", img, "--stage", "first", "--exact", "--json").stdout)[0]
    p_lrn = json.loads(cli("classify", img, "--stage", "first", "--learned", "--exact", "--json").stdout)[0]
    with psycopg.connect(db_url) as c:
        from pgvector.psycopg import register_vector

        register_vector(c)
        lmap = learned.load(c, space_at(c, STAGES["first"]))
        stored = c.execute(
            "SELECT e.embedding FROM embeddings_first e JOIN images i ON i.id = e.image_id WHERE i.source = %s",
            (p_lrn["neighbors"][0]["source"],),
        ).fetchone()[0]
    from clipvdb.pipeline import embed

    q = embed([str(img)], [STAGES["first"]], None)["first"]
    expected = np.linalg.norm(lmap.apply(q)[0] - lmap.apply(stored.to_numpy()[None])[0])
    assert p_lrn["distance"] == pytest.approx(expected, rel=1e-3)
    assert p_lrn["distance"] != pytest.approx(p_raw["distance"], rel=1e-3)


def test_the_fit_sees_the_training_split_only(store, syn_data):
    store.ingest(syn_data, "first", split="train", workers=0)
    store.ingest(syn_data, "first", split="test", workers=0)
    lmap = store.learn("first", dims=4, method="pca")
    assert lmap.fitted_rows == 60  # 60 training rows; the 20 test rows never reach the fit
    with store.connection() as conn:
        space = catalog.find_space(conn, STAGES["first"], None)
        X, y = learned.training_data(conn, STAGES["first"], space, store.dataset().id)
        splits = conn.execute(
            "SELECT DISTINCT i.split FROM images i JOIN learned_first l ON l.image_id = i.id"
        ).fetchall()
    assert len(X) == 60
    np.testing.assert_allclose(lmap.mean, X.mean(axis=0), rtol=1e-4, atol=1e-6)
    assert sorted(s[0] for s in splits) == ["test", "train"]  # every stored row gets its image, fit or not


def test_later_ingests_are_covered_and_errors_are_one_line(store, cli, syn_data):
    store.ingest(syn_data, "first", workers=0, limit=30)
    with pytest.raises(EmptyStageError, match="no learned map"):
        store.classify([str(syn_data / "test" / "red-circle" / "0000.png")], "first", SearchSettings(learned=True))
    # PCA: a well-conditioned map (an LDA of 30 rows in 3,072 dimensions has coefficients near 1e7,
    # and the training rows' images under it are mostly float32 rounding)
    store.learn("first", dims=9, method="pca")
    store.ingest(syn_data, "first", workers=0)  # 30 more rows: their learned images go in with them
    with store.connection() as conn:
        lmap = learned.load(conn, space_at(conn, STAGES["first"]))
        rows = conn.execute(
            "SELECT e.embedding, l.vec, i.label FROM learned_first l JOIN images i ON i.id = l.image_id "
            "JOIN embeddings_first e ON e.space_id = l.space_id AND e.image_id = l.image_id"
        ).fetchall()
    assert lmap is not None and len(rows) == 60
    raw = np.stack([r[0].to_numpy() for r in rows]).astype(np.float32)
    mapped = np.stack([r[1].to_numpy() for r in rows])
    labels = np.array([r[2] for r in rows])
    # every stored row's learned image is the map applied to its vector, the later 30 as the first 30
    # (the later ones from the vectors before their half-precision rounding)
    off = np.linalg.norm(mapped - lmap.apply(raw), axis=1) / np.linalg.norm(mapped, axis=1)
    assert off.max() < 2e-3, off.max()
    # and the learned search answers as numpy's nearest neighbor in the learned space
    query = str(syn_data / "test" / "red-circle" / "0000.png")
    preds = store.classify([query], "first", SearchSettings(learned=True))
    q = lmap.apply(store.embed([query], "first")["first"])[0]
    nearest = int(labels[((mapped - q) ** 2).sum(1).argmin()])
    assert preds[0].predicted_class == store.dataset().classes[nearest]
    with pytest.raises(UsageError, match="at most classes - 1 = 9"):
        store.learn("first", dims=12, method="lda")
    with pytest.raises(UsageError, match="drop --metric"):
        store.classify(
            [str(syn_data / "test" / "red-circle" / "0000.png")], "first", SearchSettings(learned=True, metric="cosine")
        )
    out = cli("learn", "--stage", "first", "--dims", "500", expect=2).output
    assert "--dims must be between 1 and 256" in out and len(out.strip().splitlines()) == 1


def test_mlp_learns_what_the_raw_space_hides():
    """Two labels by the sign of x0 * x1 (no linear map separates them) among 10 dimensions of large
    noise: 1-NN in the raw space is near chance; in the mlp map's space, near every answer is right."""
    rng = np.random.default_rng(0)

    def sample(n):
        X = np.concatenate([rng.uniform(-1, 1, (n, 2)), rng.normal(0, 3, (n, 10))], axis=1).astype(np.float32)
        return X, (X[:, 0] * X[:, 1] > 0).astype(np.int64)

    (X, y), (Q, t) = sample(8000), sample(500)

    def nn_accuracy(A, B):
        d = ((B[:, None, :] - A[None, :, :]) ** 2).sum(-1)
        return float((y[d.argmin(1)] == t).mean())

    lmap = learned.fit(X, y, STAGES["first"], "mlp", 8, seconds=120)  # the epochs, not the budget, end it
    assert lmap.dims == 8 and lmap.layers is not None and lmap.params["hidden"] == learned.HIDDEN
    assert lmap.params["steps"] == learned.MLP_EPOCHS * (len(X) // learned.MLP_BATCH)
    assert nn_accuracy(X, Q) < 0.65
    assert nn_accuracy(lmap.apply(X), lmap.apply(Q)) > 0.9


def test_mlp_map_is_stored_searched_and_kept_current(store, cli, db_url, syn_data):
    store.ingest(syn_data, "first", workers=0, limit=30)
    fitted = json.loads(
        cli("learn", "--stage", "first", "--method", "mlp", "--dims", "8", "--seconds", "2", "--json").stdout
    )
    assert fitted["method"] == "mlp" and fitted["dims"] == 8 and fitted["fitted_rows"] == 30
    store.ingest(syn_data, "first", workers=0)  # 30 more rows: their learned images go in with them
    with psycopg.connect(db_url) as c:
        from pgvector.psycopg import register_vector

        register_vector(c)
        lmap = learned.load(c, space_at(c, STAGES["first"]))
        rows = c.execute(
            "SELECT e.embedding, l.vec, i.label FROM learned_first l JOIN images i ON i.id = l.image_id "
            "JOIN embeddings_first e ON e.space_id = l.space_id AND e.image_id = l.image_id"
        ).fetchall()
    assert lmap is not None and lmap.method == "mlp" and lmap.layers is not None and len(rows) == 60
    assert lmap.matrix.shape == (learned.HIDDEN, STAGES["first"].dim) and lmap.layers[1].shape == (8, learned.HIDDEN)
    raw = np.stack([r[0].to_numpy() for r in rows]).astype(np.float32)
    mapped = np.stack([r[1].to_numpy() for r in rows])
    # every stored row's learned image is the stored map applied to its vector (first 30 and later 30)
    off = np.linalg.norm(mapped - lmap.apply(raw), axis=1) / np.linalg.norm(mapped, axis=1)
    assert off.max() < 2e-3, off.max()
    query = str(syn_data / "test" / "red-circle" / "0000.png")
    preds = store.classify([query], "first", SearchSettings(learned=True, exact=True))
    q = lmap.apply(store.embed([query], "first")["first"])[0]
    labels = np.array([r[2] for r in rows])
    assert preds[0].predicted_class == store.dataset().classes[int(labels[((mapped - q) ** 2).sum(1).argmin()])]
    run = json.loads(
        cli("evaluate", "--stage", "first", "--data", syn_data, "--learned", "--json", "--workers", "0").stdout
    )
    params = json.loads(cli("report", "--run", run["run_id"], "--view", "report_runs", "--json").stdout)
    assert params["report_runs"][0]["params"]["learned"]["first"]["method"] == "mlp"
    # an mlp map is not something revision 0018 can hold: the downgrade says so and changes nothing
    with pytest.raises(Exception, match="mlp maps, which revision 0018 cannot hold"):
        db.downgrade(db_url, "0018")
    assert db.current_revision(db_url) == db.head_revision()


def test_a_refit_indexes_only_the_new_map_rows(db_url):
    """A refit rewrites every learned row; its index holds the new rows alone, not the old map's
    beside them (an index built in the transaction that deleted them would take both: twice the
    size, and lists trained partly on vectors of a map that no longer exists)."""
    from conftest import load_vectors

    stage = STAGES["second"]
    X = np.random.default_rng(0).normal(size=(3000, stage.dim)).astype(np.float32)
    with db.connection(db_url) as conn:
        load_vectors(conn, stage, X)
        space = space_at(conn, stage)
        y = np.arange(len(X)) % 2
        sizes = []
        for dims in (64, 64):
            learned.save(conn, space, learned.fit(X, y, stage, "pca", dims))
            name = f"{stage.learned_table}_ann_{space.id}"
            sizes.append(db.scalar(conn, "SELECT pg_relation_size(%s::regclass)", (name,)))
            conn.commit()
    assert sizes[1] <= sizes[0] * 1.05, sizes
