"""A learned metric: a map fitted on one stage's labelled training vectors, stored in SQL.

`clipvdb learn --stage S --dims D` fits the map on the training split only (the test split never
reaches the fit), stores it in learned_maps, writes every stored vector's image under it into
learned_<stage> with an ivfflat index, and ingest keeps it current for later rows. `--learned` on
classify, evaluate, neighbors and serve searches that space instead of the raw one.

Methods (BENCHMARKS.md, item 10, has what each reached):
- ``nca`` (default): PCA to 256 dimensions, then a linear map to D trained in torch on CPU with a
  neighborhood-components loss over in-batch neighbors (each sample's soft nearest neighbor
  among the batch should share its label), for a time budget.
- ``lda``: PCA to 256, then linear discriminant analysis with shrinkage (scikit-learn); at most
  classes - 1 dimensions.
- ``pca``: PCA to D alone (the unsupervised reference).
- ``mlp``: a two-layer network, standardised input -> HIDDEN ReLU units -> D, trained in torch on
  CPU through a linear classifier on its D outputs (cross-entropy with label smoothing, input
  dropout, AdamW, a one-cycle learning rate) for MLP_EPOCHS epochs or as many steps as fit in the
  time budget; the classifier is thrown away and the D outputs are the learned space. Not linear: it
  reaches what no linear map of frozen features does (BENCHMARKS.md, "Models side by side").
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import psycopg

from . import db, queries, storage
from .catalog import Space
from .errors import EmptyStageError, UsageError
from .linear_map import LinearMap, one_blas_thread, packed, unpacked
from .options import LEARN_METHODS
from .projection import top_eigenvectors
from .stages import Stage
from .storage import StageRows

PCA_DIMS = 256
HIDDEN = 1024  # an mlp map's hidden units
MLP_EPOCHS = 20  # an mlp map's training, at most
MLP_BATCH = 512
PROBE_STEPS = 3  # timed to fit an mlp's training into its budget


@dataclass
class LearnedMap(LinearMap):
    """A learned metric: `matrix` maps a stage's vectors into the learned space; an mlp map's first
    layer, followed by `layers` (b1, W2, b2): learned = relu((x - mean) @ matrix.T + b1) @ W2.T + b2."""

    method: str
    params: dict
    fit_seconds: float
    layers: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def dims(self) -> int:
        return int((self.matrix if self.layers is None else self.layers[1]).shape[0])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        h = super().apply(vectors)
        if self.layers is None:
            return h
        b1, W2, b2 = self.layers
        with one_blas_thread():
            return (np.maximum(h + b1, 0.0) @ W2.T + b2).astype(np.float32)


def _pca(X: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    Xc = X - mean
    _, basis = top_eigenvectors((Xc.T @ Xc).astype(np.float64), min(dims, X.shape[1]))
    return mean.astype(np.float32), basis[:dims].astype(np.float32)


def fit_nca(
    Z: np.ndarray, y: np.ndarray, dims: int, seconds: float, seed: int = 0, batch: int = 2048
) -> tuple[np.ndarray, int]:
    """A (dims, Z.shape[1]) map trained for `seconds` with the in-batch NCA loss."""
    import torch  # only when a map is trained

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    Zt, yt = torch.from_numpy(Z), torch.from_numpy(y)
    # start from the strongest principal directions, one global scale: typical squared distances of
    # about 20, so that the soft neighbor weights are neither uniform nor all on the nearest
    sample = Zt[torch.from_numpy(rng.choice(len(Z), min(2000, len(Z)), replace=False)), :dims]
    typical = torch.cdist(sample, sample).pow(2).median().clamp(min=1e-12)
    W = torch.zeros(dims, Z.shape[1])
    W[:, :dims] = torch.eye(dims) * float(torch.sqrt(20.0 / typical))
    W.requires_grad_(True)
    opt = torch.optim.Adam([W], lr=2e-3)
    deadline = time.perf_counter() + seconds
    steps = 0
    while time.perf_counter() < deadline:
        idx = torch.from_numpy(rng.choice(len(Z), min(batch, len(Z)), replace=False))
        x, t = Zt[idx] @ W.T, yt[idx]
        d = torch.cdist(x, x).pow(2)
        d.fill_diagonal_(float("inf"))
        logp = torch.log_softmax(-d, dim=1)
        same = (t[:, None] == t[None, :]).float()
        same.fill_diagonal_(0)
        loss = -torch.logsumexp(logp + torch.log(same.clamp(min=1e-30)), dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return W.detach().numpy().astype(np.float32), steps


def fit_mlp(
    X: np.ndarray, y: np.ndarray, dims: int, seconds: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], dict]:
    """A two-layer map of X to `dims` trained through a classifier on its outputs: (mean, first
    layer's matrix with the input's standardisation folded in, (b1, W2, b2), training record)."""
    import torch  # only when a map is trained

    torch.manual_seed(seed)
    mean, std = X.mean(axis=0), X.std(axis=0) + 1e-6
    Xt = torch.from_numpy(((X - mean) / std).astype(np.float32))
    _, labels = np.unique(y, return_inverse=True)
    yt = torch.from_numpy(labels.astype(np.int64))
    classes = int(labels.max()) + 1
    net = torch.nn.Sequential(
        torch.nn.Dropout(0.2), torch.nn.Linear(X.shape[1], HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, dims)
    )
    classifier = torch.nn.Linear(dims, classes)
    batch = min(MLP_BATCH, len(X))
    per_epoch = len(X) // batch
    weights = [*net.parameters(), *classifier.parameters()]

    def step(opt: torch.optim.Optimizer, idx: torch.Tensor) -> float:
        loss = torch.nn.functional.cross_entropy(classifier(net(Xt[idx])), yt[idx], label_smoothing=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    # the steps that fit in the budget, timed on a few steps whose updates are then undone
    saved = [w.detach().clone() for w in weights]
    probe = torch.optim.AdamW(weights, lr=1e-3)
    step(probe, torch.arange(batch))  # the first step allocates: not timed
    t = time.perf_counter()
    for _ in range(PROBE_STEPS):
        step(probe, torch.arange(batch))
    per_step = (time.perf_counter() - t) / PROBE_STEPS
    with torch.no_grad():
        for w, v in zip(weights, saved, strict=True):
            w.copy_(v)
    steps = max(1, min(MLP_EPOCHS * per_epoch, int(seconds / max(per_step, 1e-9))))
    opt = torch.optim.AdamW(weights, lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    loss = float("nan")
    for n in range(steps):
        if n % per_epoch == 0:  # each epoch in a fresh order
            order = torch.randperm(len(X), generator=gen)
        i = n % per_epoch * batch
        loss = step(opt, order[i : i + batch])
        schedule.step()
    first, second = net[1], net[3]
    assert isinstance(first, torch.nn.Linear) and isinstance(second, torch.nn.Linear)
    matrix = (first.weight.detach().numpy() / std).astype(np.float32)
    layers = tuple(p.detach().numpy().astype(np.float32) for p in (first.bias, second.weight, second.bias))
    record = {"hidden": HIDDEN, "steps": steps, "epochs": round(steps / per_epoch, 2), "final_loss": round(loss, 4)}
    return mean.astype(np.float32), matrix, layers, record  # type: ignore[return-value]


def fit(
    X: np.ndarray, y: np.ndarray, stage: Stage, method: str, dims: int | None, *, seconds: float = 120.0, seed: int = 0
) -> LearnedMap:
    """Fit a map on training vectors X (float32) with labels y."""
    if method not in LEARN_METHODS:
        raise UsageError(f"unknown --method {method!r}; choose from {', '.join(LEARN_METHODS)}")
    classes = len(np.unique(y))
    if dims is None:
        dims = classes - 1 if method == "lda" else 128
    if method == "lda" and dims > classes - 1:
        raise UsageError(f"LDA gives at most classes - 1 = {classes - 1} dimensions; use --dims {classes - 1}")
    if not 1 <= dims <= min(PCA_DIMS, stage.dim):
        raise UsageError(f"--dims must be between 1 and {min(PCA_DIMS, stage.dim)}; got {dims}")
    start = time.perf_counter()
    params: dict = {"dims": dims, "seed": seed}
    layers = None
    if method == "mlp":
        mean, matrix, layers, record = fit_mlp(X, y, dims, seconds, seed)
        params.update(seconds=seconds, **record)
    elif method == "pca":
        mean, basis = _pca(X, dims)
        matrix = basis
    else:
        mean, basis = _pca(X, PCA_DIMS)
        Z = (X - mean) @ basis.T
        params["pca_dims"] = PCA_DIMS
        if method == "lda":
            from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # scikit-learn: only for lda

            lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage="auto", n_components=dims).fit(Z, y)
            W = lda.scalings_[:, :dims].T.astype(np.float32)
        else:
            W, steps = fit_nca(Z.astype(np.float32), y, dims, seconds, seed)
            params.update(seconds=seconds, steps=steps)
        matrix = W @ basis
    return LearnedMap(
        stage=stage.name,
        mean=mean,
        matrix=matrix.astype(np.float32),
        fitted_rows=len(X),
        method=method,
        params=params,
        fit_seconds=time.perf_counter() - start,
        layers=layers,
    )


def save(conn: psycopg.Connection, space: Space, lmap: LearnedMap) -> int:
    """Store the space's map and (re)write every stored vector's image under it, then its ivfflat
    index (rows/100 lists, like a projected index); returns rows written. The index is built once the
    rewrite has committed: an index built in the transaction that deleted the old map's rows would
    take them too (twice the size, its lists trained partly on another map's vectors), as would one
    built while a transaction older than the rewrite is open. A search in between reads the new rows
    without the index: the same answers, slower."""
    table = space.stage.learned_table
    shards = db.shard_count(conn, table)  # on Citus every shard indexes its own rows
    lists = max(1, int(db.scalar(conn, queries.rows_of_space(space.stage), (space.id,))) // shards // 100)
    lmap.params = {**lmap.params, "lists": lists, **({"shards": shards} if shards > 1 else {})}
    conn.execute(
        queries.SAVE_LEARNED_MAP,
        (
            space.id,
            lmap.method,
            lmap.dims,
            packed(lmap.mean),
            packed(lmap.matrix),
            None if lmap.layers is None else packed(np.concatenate([a.ravel() for a in lmap.layers])),
            lmap.fitted_rows,
            json.dumps(lmap.params),
            lmap.fit_seconds,
        ),
    )
    name = f"{table}_ann_{space.id}"
    conn.execute(queries.drop_index(name))
    written = storage.map_all(conn, space, lmap.apply, table, "vec").rows
    conn.commit()
    db.set_local(conn, [("maintenance_work_mem", "1GB")], distributed=shards > 1)
    conn.execute(
        queries.create_index(
            name,
            table,
            "vec",
            "ivfflat",
            "vector_l2_ops",
            {"lists": lists},
            (space.id, None, f"vector({lmap.dims})"),
            lmap.dims,
        )
    )
    conn.commit()
    conn.execute(queries.analyze(table))
    conn.commit()
    return written


def load(conn: psycopg.Connection, space: Space) -> LearnedMap | None:
    stage = space.stage
    row = conn.execute(queries.LOAD_LEARNED_MAP, (space.id,)).fetchone()
    if row is None:
        return None
    method, dims, mean, matrix, layers, fitted, params, seconds = row
    first = dims if layers is None else int(params["hidden"])
    return LearnedMap(
        stage=stage.name,
        mean=unpacked(mean, stage.dim),
        matrix=unpacked(matrix, first, stage.dim),
        fitted_rows=fitted,
        method=method,
        params=params,
        fit_seconds=seconds or 0.0,
        layers=None if layers is None else _layers(layers, first, dims),
    )


def _layers(data: bytes, hidden: int, dims: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An mlp map's stored b1, W2, b2."""
    flat = unpacked(data, hidden + dims * hidden + dims)
    return flat[:hidden], flat[hidden : hidden + dims * hidden].reshape(dims, hidden), flat[hidden + dims * hidden :]


def add(conn: psycopg.Connection, rows: StageRows, lmap: LearnedMap, image_ids: list[int], vectors: np.ndarray) -> None:
    """Images of newly stored rows under the stored map (ingest, between fits)."""
    lmap.add(conn, rows, rows.stage.learned_table, "vec", image_ids, vectors)


def require(conn: psycopg.Connection, space: Space) -> LearnedMap:
    lmap = load(conn, space)
    if lmap is None:
        name = space.stage.name
        raise EmptyStageError(f"stage {name} has no learned map; run 'clipvdb learn --stage {name}' first")
    return lmap


def training_data(conn: psycopg.Connection, stage: Stage, space: int, dataset: int) -> tuple[np.ndarray, np.ndarray]:
    """The training split's vectors and labels: the only rows a fit ever sees."""
    _, labels, X = StageRows(stage, space, dataset, "train").read(conn, "learn from")
    return X, labels
