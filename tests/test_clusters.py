"""Clustering stored vectors: k-means, agglomerative, DBSCAN; the views against scikit-learn's scores."""

import json

import numpy as np
import psycopg
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from clipvdb.errors import EmptyStageError, UsageError


def _members(db_url, clustering_id):
    with psycopg.connect(db_url) as c:
        return c.execute(
            """SELECT m.cluster, i.label, m.distance FROM cluster_members m JOIN images i ON i.id = m.image_id
               WHERE m.clustering_id = %s ORDER BY m.image_id""",
            (clustering_id,),
        ).fetchall()


def _majority(clusters: list[int], labels: list[int], k: int) -> int:
    """How many members of cluster k carry its most frequent label."""
    return int(max(np.bincount([lab for cl, lab in zip(clusters, labels, strict=True) if cl == k])))


def test_kmeans_is_stored_and_the_views_match_scikit_learn(store, db_url, syn_data):
    store.ingest(syn_data, "first", workers=0)
    c = store.cluster("first", k=10)
    rows = _members(db_url, c.id)
    clusters, labels = [r[0] for r in rows], [r[1] for r in rows]
    assert c.n == len(rows) == 60 and c.n_clusters == len(set(clusters)) <= 10 and c.n_noise == 0
    assert c.adjusted_rand_index == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-9)
    assert c.normalized_mutual_info == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-9)
    majority = sum(_majority(clusters, labels, k) for k in set(clusters))
    assert c.purity == pytest.approx(majority / 60, abs=1e-4)
    assert sorted(c.sizes, reverse=True) == c.sizes and sum(c.sizes) == 60
    # each member's distance is to its cluster's stored centre
    with psycopg.connect(db_url) as conn:
        from pgvector.psycopg import register_vector

        register_vector(conn)
        centre = np.asarray(
            conn.execute("SELECT centre FROM cluster_centres_first WHERE clustering_id = %s AND cluster = 0", (c.id,))
            .fetchone()[0]
            .to_numpy(),
            dtype=np.float64,
        )
        emb = conn.execute(
            """SELECT e.embedding, m.distance FROM cluster_members m
               JOIN embeddings_first e ON e.image_id = m.image_id WHERE m.clustering_id = %s AND m.cluster = 0
               LIMIT 1""",
            (c.id,),
        ).fetchone()
    assert np.linalg.norm(emb[0].to_numpy().astype(np.float64) - centre) == pytest.approx(emb[1], rel=2e-3)
    # per cluster: its size and the share of its majority label, counted here from the members
    with psycopg.connect(db_url) as conn:
        per_cluster = conn.execute(
            "SELECT cluster, size, purity FROM report_cluster_classes WHERE clustering_id = %s", (c.id,)
        ).fetchall()
    expected = {k: (clusters.count(k), _majority(clusters, labels, k) / clusters.count(k)) for k in set(clusters)}
    assert {k: (n, float(p)) for k, n, p in per_cluster} == {
        k: (n, pytest.approx(p, abs=1e-4)) for k, (n, p) in expected.items()
    }


def test_separable_colours_cluster_perfectly(store, tmp_path):
    root = tmp_path / "colours"
    rng = np.random.default_rng(0)
    for name, colour in (("red", (230, 20, 20)), ("green", (20, 230, 20)), ("blue", (20, 20, 230))):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(8):
            noise = rng.integers(-10, 10, (32, 32, 3))
            Image.fromarray(np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    store.ingest(root, "first", workers=0)
    for method, kw in (("kmeans", {}), ("agglomerative", {}), ("dbscan", {"eps": 5.0, "min_samples": 3})):
        c = store.cluster("first", k=3, method=method, **kw)
        assert (c.n_clusters, c.purity, c.adjusted_rand_index) == (3, 1.0, 1.0), (method, c)
        assert c.normalized_mutual_info == pytest.approx(1.0)


def test_bad_input_is_one_line(store, cli, syn_data):
    with pytest.raises(UsageError, match="no dataset yet"):
        store.cluster("first", k=3)
    store.ingest(syn_data, "first,second", workers=0, limit=10)
    store.index("second", kind="none")
    with psycopg.connect(store.url) as c:
        c.execute("DELETE FROM embeddings_second")
    with pytest.raises(EmptyStageError, match="no train rows to cluster"):
        store.cluster("second", k=3)
    store.ingest(syn_data, "first", workers=0)
    with pytest.raises(UsageError, match="larger than the 60 stored rows"):
        store.cluster("first", k=61)
    with pytest.raises(UsageError, match="found only noise.*raise --eps"):
        store.cluster("first", method="dbscan", eps=0.001, min_samples=5)
    out = cli("cluster", "fit", "--stage", "first", "--k", "100", expect=2).output
    assert "larger than the 60 stored rows" in out and len(out.strip().splitlines()) == 1
    assert "no clustering 99" in cli("cluster", "show", "99", expect=2).output


def test_cli_fit_list_show(cli, db_url, syn_data, tmp_path):
    cli("ingest", "--stage", "first", "--data", syn_data, "--workers", "0")
    fitted = json.loads(cli("cluster", "fit", "--stage", "first", "--k", "5", "--json").stdout)
    rows = _members(db_url, fitted["id"])
    clusters, labels = [r[0] for r in rows], [r[1] for r in rows]
    assert fitted["n_clusters"] == len(set(clusters)) == 5 and len(rows) == 60
    assert fitted["purity"] == pytest.approx(sum(_majority(clusters, labels, k) for k in range(5)) / 60, abs=1e-4)
    sampled = json.loads(
        cli(
            "cluster", "fit", "--stage", "first", "--method", "agglomerative", "--k", "4", "--sample", "30", "--json"
        ).stdout
    )
    assert sampled["n"] == 30 and sampled["params"]["sample"] == 30
    listed = json.loads(cli("cluster", "list", "--json").stdout)
    assert [c["id"] for c in listed] == [sampled["id"], fitted["id"]]
    assert "clusterings" in cli("cluster", "list").output
    path = cli("cluster", "show", fitted["id"], "--out", tmp_path / "g.png", "--per-cluster", "4").output.strip()
    with Image.open(path) as img:
        assert img.size == (170 + 4 * 64, 5 * 64)
