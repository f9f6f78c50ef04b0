"""A stored set full of copies: the default (projected) path gives the exact answers when images are
stored several times byte for byte, k neighbors are k stored images (copies vote), and rows at equal
distance come in image id order, on one node and on Citus alike."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from psycopg import sql

from clipvdb import Store, TinyEncoder, db
from clipvdb.knn import SearchSettings, vote
from clipvdb.queries import set_configs
from clipvdb.stages import STAGES

FIRST = STAGES["first"]
BASES, VARIANTS, QUERIES_PER_BASE = 24, 10, 3
FILLER = 4000  # noise images far from every cluster: enough rows that the planner takes the index
CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def copies_data(tmp_path_factory) -> Path:
    """Clusters of near images, half of them stored 5-10 times as byte-identical files.

    24 random base images, 10 noisy variants of each (240 distinct images, the label varying within
    a cluster): half are one file each, the other half one file and 4-9 copies of its bytes under
    other names (about 1,000 rows), and 4,000 noise images. The queries are 3 fresh variants of
    each base. A query's nearest images are its cluster's variants, which a 64-d projection orders
    only roughly: the exact re-rank must see every one of them, however many times each is stored."""
    root = tmp_path_factory.mktemp("copies") / "copies"
    rng = np.random.default_rng(11)
    bases = rng.integers(40, 216, size=(BASES, 32, 32, 3))

    def variant(base: np.ndarray) -> np.ndarray:
        return np.clip(base + rng.integers(-30, 31, size=base.shape), 0, 255).astype(np.uint8)

    for b, base in enumerate(bases):
        for v in range(VARIANTS):
            label = CLASSES[(b + v) % len(CLASSES)]
            folder = root / "train" / label
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"b{b:02d}v{v:02d}.png"
            Image.fromarray(variant(base)).save(path)
            if (b + v) % 2:
                for c in range(int(rng.integers(4, 10))):
                    shutil.copyfile(path, folder / f"b{b:02d}v{v:02d}c{c}.png")
        for v in range(QUERIES_PER_BASE):
            folder = root / "test" / CLASSES[b % len(CLASSES)]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(variant(base)).save(folder / f"q{b:02d}v{v}.png")
    for f in range(FILLER):
        noise = rng.integers(0, 256, size=(32, 32, 3)).astype(np.uint8)
        Image.fromarray(noise).save(root / "train" / CLASSES[f % len(CLASSES)] / f"noise{f:04d}.png")
    return root


def _queries(store: Store, data: Path) -> tuple[list[Path], np.ndarray]:
    """The test images and their stage-first vectors as the server compares them (half precision)."""
    paths = sorted((data / "test").rglob("*.png"))
    vectors = store.embed([str(p) for p in paths], "first")["first"]
    return paths, vectors


def _stored(store: Store, dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Every stored row of the dataset: image ids, labels, vectors (read back as stored), sources."""
    ds = store.dataset(dataset).id
    with store.connection() as conn:
        rows = conn.execute(
            "SELECT e.image_id, i.label, i.source, e.embedding FROM embeddings_first e "
            "JOIN images i ON i.id = e.image_id WHERE e.dataset_id = %s AND e.split = 'train'",
            (ds,),
        ).fetchall()
        conn.commit()
    ids = np.array([r[0] for r in rows])
    labels = np.array([r[1] for r in rows])
    vectors = np.stack([db.as_array(r[3]) for r in rows]).astype(np.float64)
    return ids, labels, vectors, {r[0]: r[2] for r in rows}


def _exact(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> list[list[int]]:
    """The k nearest stored rows of each query by brute force, ties at equal distance by image id."""
    q = queries.astype(np.float16).astype(np.float64)
    out = []
    for row in q:
        d = ((vectors - row) ** 2).sum(1)
        out.append([int(ids[j]) for j in np.lexsort((ids, d))[:k]])
    return out


def _plan(store: Store, dataset: str, queries: np.ndarray, settings: SearchSettings) -> str:
    """The search statement's EXPLAIN ANALYZE, with the searcher's parameters and index settings."""
    searcher = store.searcher(FIRST, settings, dataset=dataset)
    index_settings = searcher.index_settings()
    with store.connection() as conn, conn.transaction(force_rollback=True):
        conn.execute(set_configs(len(index_settings)), [x for pair in index_settings for x in pair])
        plan = conn.execute(sql.SQL("EXPLAIN ANALYZE ") + searcher.sql, searcher.query_params(queries), prepare=False)
        return "\n".join(r[0] for r in plan.fetchall())


def _search(store: Store, dataset: str, queries: np.ndarray, settings: SearchSettings) -> list[list[int]]:
    searcher = store.searcher(FIRST, settings, dataset=dataset)
    with store.connection() as conn:
        found, _ = searcher.search(conn, queries)
        conn.commit()
    return [[n.image_id for n in neigh] for neigh in found]


def _ingest(store: Store, data: Path) -> Store:
    """The set ingested at stage first with its default index (a projected ivfflat at this size)."""
    store.ingest(data, stages="first", split="train")
    return store


def _majority(labels: list[int]) -> int:
    """The most frequent label, ties to the one that comes first (the nearest)."""
    counts = Counter(labels)
    return next(label for label in labels if counts[label] == max(counts.values()))


def test_the_set_holds_copies_and_a_projected_index(store, copies_data):
    single = _ingest(store, copies_data)
    ids, _, vectors, _ = _stored(single, "copies")
    distinct = len(np.unique(vectors, axis=0))
    cluster_rows = len(ids) - FILLER
    assert distinct == BASES * VARIANTS + FILLER and cluster_rows >= 4 * BASES * VARIANTS  # mostly copies
    info = single.index_info("first")
    assert info.kind == "ivfflat" and info.params.get("project") == 64 and info.exists


@pytest.mark.parametrize("k", [1, 12])
def test_default_path_equals_exact_search_with_copies(store, copies_data, k):
    single = _ingest(store, copies_data)
    paths, queries = _queries(single, copies_data)
    ids, _, vectors, _ = _stored(single, "copies")
    truth = _exact(ids, vectors, queries, k)
    assert _search(single, "copies", queries, SearchSettings(k=k)) == truth
    assert _search(single, "copies", queries, SearchSettings(k=k, exact=True)) == truth
    if k == 1:  # the candidates came through the projected ivfflat index
        assert "Index Scan using projections_first_ann_" in _plan(single, "copies", queries, SearchSettings(k=k))
    if k > 1:  # the k nearest hold copies of one image, each its own neighbor, in image id order
        row_of = {int(i): vectors[j].tobytes() for j, i in enumerate(ids)}
        assert any(len({row_of[i] for i in top}) < len(top) for top in truth)


def test_copies_vote_as_images(store, copies_data):
    """k = 5: every stored row among the five nearest votes, a copy as much as the image it copies;
    the prediction is the majority of those rows' labels (ties to the nearest)."""
    k = 5
    single = _ingest(store, copies_data)
    paths, queries = _queries(single, copies_data)
    ids, labels, vectors, _ = _stored(single, "copies")
    label_of = dict(zip(ids.tolist(), labels.tolist(), strict=True))
    row_of = {int(i): vectors[j].tobytes() for j, i in enumerate(ids)}
    truth = _exact(ids, vectors, queries, k)
    run = single.evaluate(copies_data, stage="first", settings=SearchSettings(k=k))
    with single.connection() as conn:
        predicted = dict(
            conn.execute(
                "SELECT i.source, p.predicted FROM predictions p JOIN images i ON i.id = p.image_id "
                "WHERE p.run_id = %s",
                (run.run_id,),
            ).fetchall()
        )
    expected = [_majority([label_of[i] for i in top]) for top in truth]
    assert [predicted[str(p.relative_to(copies_data))] for p in paths] == expected
    # the same rows with each image's copies counted once vote otherwise for some queries
    once = [_majority([label_of[i] for i in {row_of[i]: i for i in reversed(top)}.values()][::-1]) for top in truth]
    assert once != expected


def test_vote_counts_each_copy():
    from clipvdb.knn import Neighbor

    # one image of label 1 nearest, then an image of label 0 stored twice: two votes to one
    neigh = [Neighbor(7, 1, "b.png", 1.0), Neighbor(3, 0, "a.png", 2.0), Neighbor(9, 0, "a copy.png", 2.0)]
    assert vote(neigh)[0] == 0


def test_ties_broken_alike_on_one_node_and_citus(store, copies_data, own_citus_home):
    """The cluster answers the default (k = 12: every shard's share of the candidates holds a
    cluster) and the exact path with the rows the brute force gives, tied copies in image id order,
    and the single node's images."""
    single = _ingest(store, copies_data)
    _, queries = _queries(single, copies_data)
    with Store(home=own_citus_home, encoder=TinyEncoder()) as cluster:
        cluster.ingest(copies_data, stages="first", split="train")
        ids, _, vectors, source = _stored(cluster, "copies")
        truth = _exact(ids, vectors, queries, 12)
        default = _search(cluster, "copies", queries, SearchSettings(k=12))
        exact = _search(cluster, "copies", queries, SearchSettings(k=12, exact=True))
    assert default == truth and exact == truth
    _, _, _, one_source = _stored(single, "copies")
    one = _search(single, "copies", queries, SearchSettings(k=12))
    assert [[one_source[i] for i in top] for top in one] == [[source[i] for i in top] for top in exact]


def test_the_scale_set_with_duplicates(tmp_path):
    """bench.scale_data's copies kind: copies 01-07 of each image are one file's bytes (its flip),
    the rest near copies that differ from it and from each other; the same arguments give the same
    files."""
    from bench.scale_data import IDENTICAL, make
    from clipvdb import synthetic
    from clipvdb.sources import open_source

    src = synthetic.generate(tmp_path / "src", {"train": 3, "test": 1})
    info = make(src, tmp_path / "a", total=300, seed=5, workers=2, kind="copies")
    assert info["copies_per_original"] == 9 and info["identical_per_original"] == IDENTICAL == 7
    items = open_source(tmp_path / "a").items("train")
    assert len(items) == 300 and all("/base/" in it.key for it in items[:30])
    for it in items[:30]:
        cls, name = it.key.split("/")[1], Path(it.key).stem
        files = [tmp_path / "a" / "train" / cls / f"copy{c:02d}" / f"{name}.jpg" for c in range(1, 10)]
        same = {f.read_bytes() for f in files[:IDENTICAL]}
        near = [f.read_bytes() for f in files[IDENTICAL:]]
        assert len(same) == 1 and len(set(near) | same) == 1 + len(near)
        original = np.asarray(Image.open(src / "train" / cls / f"{name}.png").convert("RGB"), dtype=np.float32)
        flip = np.asarray(Image.open(files[0]).convert("RGB"), dtype=np.float32)
        assert np.abs(flip - original[:, ::-1]).mean() < np.abs(flip - original).mean()  # the mirror image
    make(src, tmp_path / "b", total=300, seed=5, workers=1, kind="copies")
    digest = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*.jpg")}
    assert digest == {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*.jpg")}
