"""The systems bench.peers runs clipvdb's stage-first job in, each from the decoded pixel array:
build (insert and index) timed apart from the queries, each through its batch API where it has one.

Every function takes the stored vectors X (float32, rows = stored images, index = id) and the
queries Q, and returns a dict: build_s, query_s, nearest (the stored index found for each query,
in order) and config (what was built and how it was asked, in words). The packages come with the
`bench` extra; each is imported inside its function, since none is needed to run clipvdb and a
missing one costs only its own row.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# One HNSW setting for every graph peer, so their rows differ by implementation only.
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
HNSW_EF_SEARCH = 100
DB_BATCH = 1000  # queries per request to an embedded database with a batch API
SQL_BATCH = 100  # queries per SQL statement where a statement takes a set of them (clipvdb's own)


def _timed(fn: Callable):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _hnsw_words(m: int = HNSW_M, efc: int = HNSW_EF_CONSTRUCTION, ef: int = HNSW_EF_SEARCH) -> str:
    return f"HNSW M {m}, ef_construction {efc}, ef_search {ef}"


def rerank(X: np.ndarray, Q: np.ndarray, candidates: np.ndarray, chunk: int = 500) -> np.ndarray:
    """The exact nearest among each query's candidate rows (-1 for none): |x|^2 - 2 x.q per candidate."""
    sq = (X * X).sum(1)
    out = np.empty(len(Q), dtype=np.int64)
    for s in range(0, len(Q), chunk):
        c, q = candidates[s : s + chunk], Q[s : s + chunk]
        safe = np.where(c < 0, 0, c)
        d = sq[safe] - 2 * np.einsum("qkd,qd->qk", X[safe], q)
        d[c < 0] = np.inf
        out[s : s + chunk] = c[np.arange(len(c)), d.argmin(1)]
    return out


def faiss_flat(X: np.ndarray, Q: np.ndarray) -> dict:
    import faiss

    def build():
        index = faiss.IndexFlatL2(X.shape[1])
        index.add(X)
        return index

    index, build_s = _timed(build)
    (_, nn), query_s = _timed(lambda: index.search(Q, 1))
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn[:, 0],
        "config": "IndexFlatL2: exact, all queries in one call",
    }


def faiss_hnsw(X: np.ndarray, Q: np.ndarray) -> dict:
    import faiss

    def build():
        index = faiss.IndexHNSWFlat(X.shape[1], HNSW_M)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(X)
        return index

    index, build_s = _timed(build)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    (_, nn), query_s = _timed(lambda: index.search(Q, 1))
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn[:, 0],
        "config": f"IndexHNSWFlat on the 3,072-d vectors, {_hnsw_words()}",
    }


PCA_SAMPLE = 20_000  # rows the PCA is fit on, as clipvdb's projection.FIT_ROWS


def pca(X: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the `dim` strongest principal directions (rows) of the first PCA_SAMPLE rows, found
    as clipvdb's projection finds them (subspace iteration on the covariance)."""
    from clipvdb.projection import top_eigenvectors

    sample = X[:PCA_SAMPLE]
    mean = sample.mean(axis=0)
    centred = sample - mean
    if len(sample) < X.shape[1]:  # fewer rows than dimensions (small sets): a thin SVD
        basis = np.linalg.svd(centred.astype(np.float64), full_matrices=False)[2][:dim]
    else:
        basis = top_eigenvectors((centred.T @ centred).astype(np.float64), dim)[1][:dim]
    return mean.astype(np.float32), basis.astype(np.float32)


def faiss_projected(X: np.ndarray, Q: np.ndarray, index: dict) -> dict:
    """A PCA projection, an ANN index over it and an exact re-rank of its candidates over the full
    vectors: the algorithm of clipvdb's projected index, in process. `index`: kind ("ivfflat" or
    "hnsw"), project, candidates, and lists and probes, or m, ef_construction and ef_search."""
    import faiss

    kind, cands = index["kind"], int(index["candidates"])
    dim = min(int(index["project"]), len(X))  # no more directions than rows (small sets)

    def build():
        mean, basis = pca(X, dim)
        P = (X - mean) @ basis.T
        if kind == "ivfflat":
            ann = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, int(index["lists"]))
            ann.train(P)
        else:
            ann = faiss.IndexHNSWFlat(dim, int(index["m"]))
            ann.hnsw.efConstruction = int(index["ef_construction"])
        ann.add(P)
        return mean, basis, ann

    (mean, basis, ann), build_s = _timed(build)
    if kind == "ivfflat":
        ann.nprobe = int(index["probes"])
        words = f"{index['lists']} lists, {index['probes']} probes"
    else:
        ann.hnsw.efSearch = int(index["ef_search"])
        words = _hnsw_words(index["m"], index["ef_construction"], index["ef_search"])

    def query():
        _, cand = ann.search((Q - mean) @ basis.T, cands)
        return rerank(X, Q, cand)

    nn, query_s = _timed(query)
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn,
        "config": (
            f"PCA {dim} (fit on {min(len(X), PCA_SAMPLE):,} rows) + faiss {kind} ({words}) + exact re-rank of "
            f"{cands} candidates over the 3,072-d vectors"
        ),
    }


def hnswlib_peer(X: np.ndarray, Q: np.ndarray) -> dict:
    import hnswlib

    def build():
        index = hnswlib.Index(space="l2", dim=X.shape[1])
        index.init_index(max_elements=len(X), M=HNSW_M, ef_construction=HNSW_EF_CONSTRUCTION)
        index.add_items(X, np.arange(len(X)))
        return index

    index, build_s = _timed(build)
    index.set_ef(HNSW_EF_SEARCH)
    (nn, _), query_s = _timed(lambda: index.knn_query(Q, k=1))
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn[:, 0].astype(np.int64),
        "config": f"{_hnsw_words()}, all threads, all queries in one call",
    }


def usearch_peer(X: np.ndarray, Q: np.ndarray) -> dict:
    from usearch.index import Index

    def build():
        index = Index(
            ndim=X.shape[1],
            metric="l2sq",
            dtype="f32",
            connectivity=HNSW_M,
            expansion_add=HNSW_EF_CONSTRUCTION,
            expansion_search=HNSW_EF_SEARCH,
        )
        index.add(np.arange(len(X)), X)
        return index

    index, build_s = _timed(build)
    found, query_s = _timed(lambda: index.search(Q, 1))
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": np.asarray(found.keys).reshape(len(Q), -1)[:, 0].astype(np.int64),
        "config": f"{_hnsw_words()} (connectivity, expansion_add, expansion_search), float32, all queries in one call",
    }


def _fixed_size_list(X: np.ndarray):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), X.shape[1])


def duckdb_vss(X: np.ndarray, Q: np.ndarray) -> dict:
    """DuckDB with the vss extension's HNSW index, loaded from the duckdb-extension-vss wheel (no
    download). A batch is one statement: a LATERAL join of a table of queries to an ORDER BY
    distance LIMIT 1, which vss answers with its index (HNSW_INDEX_JOIN); DuckDB's
    top_n_window_elimination rewrite is turned off because it turns that join into an arg_min
    aggregate the index cannot serve."""
    import duckdb
    import duckdb_extension_vss
    import pyarrow as pa

    extension = Path(duckdb_extension_vss.__file__).parent / f"extensions/v{duckdb.__version__}/vss.duckdb_extension"
    if not extension.exists():
        raise RuntimeError(
            f"no vss build for duckdb {duckdb.__version__}: install the duckdb-extension-vss of that version"
        )
    con = duckdb.connect()
    con.load_extension(str(extension))
    dim = X.shape[1]
    con.register("stored", pa.table({"id": pa.array(np.arange(len(X))), "v": _fixed_size_list(X)}))

    def build():
        con.execute(f"CREATE TABLE items AS SELECT id, v::FLOAT[{dim}] AS v FROM stored")
        con.execute(
            "CREATE INDEX items_hnsw ON items USING HNSW (v) WITH "
            f"(metric = 'l2sq', M = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})"
        )

    _, build_s = _timed(build)
    con.execute(f"SET hnsw_ef_search = {HNSW_EF_SEARCH}")
    con.execute("SET disabled_optimizers = 'top_n_window_elimination'")
    sql = (
        "SELECT q.qid, n.id FROM q, LATERAL (SELECT items.id FROM items "
        "ORDER BY array_distance(q.v, items.v) LIMIT 1) n ORDER BY q.qid"
    )

    def queries_from(s: int) -> None:
        rows = {"qid": pa.array(np.arange(s, min(s + DB_BATCH, len(Q)))), "v": _fixed_size_list(Q[s : s + DB_BATCH])}
        con.register("batch", pa.table(rows))
        con.execute(f"CREATE OR REPLACE TEMP TABLE q AS SELECT qid, v::FLOAT[{dim}] AS v FROM batch")

    queries_from(0)  # untimed: the plan must search the index
    if "HNSW_INDEX_JOIN" not in str(con.execute("EXPLAIN " + sql).fetchall()):
        raise RuntimeError("the batch statement does not use the HNSW index (no HNSW_INDEX_JOIN in its plan)")

    def query():
        nn = np.empty(len(Q), dtype=np.int64)
        for s in range(0, len(Q), DB_BATCH):
            queries_from(s)
            for qid, found in con.execute(sql).fetchall():
                nn[qid] = found
        return nn

    nn, query_s = _timed(query)
    con.close()
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn,
        "config": f"vss {_hnsw_words()}, metric l2sq, in-memory database; {DB_BATCH:,} queries per statement (LATERAL join)",
    }


def chroma_peer(X: np.ndarray, Q: np.ndarray) -> dict:
    import chromadb
    from chromadb.api.client import SharedSystemClient

    with tempfile.TemporaryDirectory(prefix="peers-chroma-") as tmp:
        client = chromadb.PersistentClient(path=tmp, settings=chromadb.Settings(anonymized_telemetry=False))
        hnsw = {
            "space": "l2",
            "max_neighbors": HNSW_M,
            "ef_construction": HNSW_EF_CONSTRUCTION,
            "ef_search": HNSW_EF_SEARCH,
        }

        def build():
            collection = client.create_collection("pixels", configuration={"hnsw": hnsw}, embedding_function=None)
            step = client.get_max_batch_size()
            for s in range(0, len(X), step):
                collection.add(ids=[str(i) for i in range(s, min(s + step, len(X)))], embeddings=X[s : s + step])
            return collection

        collection, build_s = _timed(build)

        def query():
            nn = []
            for s in range(0, len(Q), DB_BATCH):
                found = collection.query(query_embeddings=Q[s : s + DB_BATCH], n_results=1, include=[])
                nn += [int(ids[0]) for ids in found["ids"]]
            return np.array(nn, dtype=np.int64)

        nn, query_s = _timed(query)
        step = client.get_max_batch_size()
        SharedSystemClient.clear_system_cache()  # chromadb keeps each client's system (and index) cached
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn,
        "config": f"PersistentClient, {_hnsw_words()} (max_neighbors), l2; added {step:,} per call, {DB_BATCH:,} queries per call",
    }


QDRANT_UPSERT = 256


def qdrant_local(X: np.ndarray, Q: np.ndarray) -> dict:
    """qdrant-client's local mode in memory (":memory:"): no server; it builds no HNSW index and
    answers by an exhaustive numpy scan. (On disk, path=..., local mode writes each point to SQLite
    on its own: 50,000 points took about ten minutes, none of which a query uses.)"""
    import qdrant_client
    from qdrant_client import models

    client = qdrant_client.QdrantClient(":memory:")

    def build():
        client.create_collection(
            "pixels", vectors_config=models.VectorParams(size=X.shape[1], distance=models.Distance.EUCLID)
        )
        for s in range(0, len(X), QDRANT_UPSERT):
            ids = list(range(s, min(s + QDRANT_UPSERT, len(X))))
            client.upsert("pixels", points=models.Batch(ids=ids, vectors=X[s : s + QDRANT_UPSERT].tolist()))

    _, build_s = _timed(build)

    def query():
        nn = []
        for s in range(0, len(Q), SQL_BATCH):
            requests = [models.QueryRequest(query=q.tolist(), limit=1) for q in Q[s : s + SQL_BATCH]]
            nn += [r.points[0].id for r in client.query_batch_points("pixels", requests=requests)]
        return np.array(nn, dtype=np.int64)

    nn, query_s = _timed(query)
    client.close()
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn,
        "config": (
            f'local mode in memory (":memory:"), Euclid, exhaustive (local mode builds no index); '
            f"upserted {QDRANT_UPSERT} per call, {SQL_BATCH} queries per query_batch_points call"
        ),
    }


LANCE_SUB_VECTOR_DIM = 16  # 3,072 / 16 = 192 sub-vectors of 16 dimensions
LANCE_PROBES = 20
LANCE_REFINE = 20


def lancedb_peer(X: np.ndarray, Q: np.ndarray) -> dict:
    import lancedb
    import pyarrow as pa
    from lancedb.index import IvfPq

    # sqrt of the rows, but no more than Lance trains: one partition per 256 rows at most
    partitions = max(1, min(int(math.sqrt(len(X))), len(X) // 256))
    sub_vectors = X.shape[1] // LANCE_SUB_VECTOR_DIM
    with tempfile.TemporaryDirectory(prefix="peers-lance-") as tmp:
        db = lancedb.connect(tmp)

        def build():
            table = db.create_table(
                "pixels", pa.table({"id": pa.array(np.arange(len(X))), "vector": _fixed_size_list(X)})
            )
            config = IvfPq(distance_type="l2", num_partitions=partitions, num_sub_vectors=sub_vectors)
            table.create_index("vector", config=config)
            return table

        table, build_s = _timed(build)

        def query():
            nn = np.empty(len(Q), dtype=np.int64)
            for s in range(0, len(Q), DB_BATCH):
                search = table.search(Q[s : s + DB_BATCH]).nprobes(LANCE_PROBES).refine_factor(LANCE_REFINE)
                found = search.limit(1).select(["id"]).to_arrow()
                nn[s + found["query_index"].to_numpy()] = found["id"].to_numpy()
            return nn

        nn, query_s = _timed(query)
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn,
        "config": (
            f"IVF-PQ, {partitions} partitions, {sub_vectors} sub-vectors of "
            f"{LANCE_SUB_VECTOR_DIM} dimensions, 8 bits; {LANCE_PROBES} probes, refine factor {LANCE_REFINE} "
            f"(re-ranked over the full vectors); {DB_BATCH:,} queries per search call"
        ),
    }


SQLITE_CONNECTIONS = 2


def sqlite_vec_peer(X: np.ndarray, Q: np.ndarray) -> dict:
    """sqlite-vec's vec0 table (exhaustive: it has no ANN index), through apsw: a Python built without
    loadable-extension support cannot load SQLite extensions with the standard library. A batch is
    one statement joining a table of queries to vec0's KNN (MATCH ... AND k = 1), on
    SQLITE_CONNECTIONS connections in threads, as clipvdb's evaluate searches on 2 connections."""
    import apsw
    import sqlite_vec

    def connect(path: str):
        con = apsw.Connection(path)
        con.enable_load_extension(True)
        con.load_extension(sqlite_vec.loadable_path())
        return con

    with tempfile.TemporaryDirectory(prefix="peers-sqlite-vec-") as tmp:
        path = str(Path(tmp) / "vec.db")
        con = connect(path)

        def build():
            con.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{X.shape[1]}])")
            with con:
                con.executemany(
                    "INSERT INTO v(rowid, embedding) VALUES (?, ?)", ((i, X[i].tobytes()) for i in range(len(X)))
                )

        _, build_s = _timed(build)
        nn = np.full(len(Q), -1, dtype=np.int64)
        sql = "SELECT q.id, v.rowid FROM q JOIN v ON v.embedding MATCH q.vec AND v.k = 1"
        parts = np.array_split(np.arange(len(Q)), SQLITE_CONNECTIONS)
        errors: list[BaseException] = []

        def work(part: np.ndarray) -> None:
            try:
                search(part)
            except BaseException as exc:  # raised again in the calling thread, after the join
                errors.append(exc)

        def search(part: np.ndarray) -> None:
            c = connect(path)
            c.execute("CREATE TEMP TABLE q (id INTEGER PRIMARY KEY, vec BLOB)")
            for s in range(0, len(part), SQL_BATCH):
                chunk = part[s : s + SQL_BATCH]
                with c:
                    c.execute("DELETE FROM q")
                    c.executemany("INSERT INTO q VALUES (?, ?)", ((int(i), Q[i].tobytes()) for i in chunk))
                for qid, found in c.execute(sql):
                    nn[qid] = found
            c.close()

        def query():
            threads = [threading.Thread(target=work, args=(p,)) for p in parts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if errors:
                raise errors[0]

        _, query_s = _timed(query)
        con.close()
    return {
        "build_s": build_s,
        "query_s": query_s,
        "nearest": nn,
        "config": (
            f"vec0 float[{X.shape[1]}], exhaustive (no ANN index), via apsw; {SQL_BATCH} queries per "
            f"statement on {SQLITE_CONNECTIONS} connections"
        ),
    }
