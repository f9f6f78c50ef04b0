"""Edits to the stored data: delete images, relabel them, list, rename and drop datasets.

Images are chosen in a dataset (and split) by id, or by path or glob as the user has them: absolute,
relative to the working directory, or relative to the dataset's folder (`train/cat/*.png`). `*` and
`?` stay within a folder, `**` crosses folders. Each edit is one transaction and takes a dry run that
counts what it would touch and touches nothing. Delete and relabel set the dataset's changed_at, so
the runs evaluated before are no longer current (report_runs.current, /runs); a deleted image leaves
those runs too (its predictions go; an answer that named it as the neighbour keeps its label without
the link). Dropping a dataset drops its runs and clusterings with it.
"""

from __future__ import annotations

import csv
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from . import catalog, db, indexes, queries
from .errors import UsageError
from .records import Record
from .session import Session
from .stages import STAGES, Stage

_GLOB = re.compile(r"[*?\[]")


@dataclass
class DatasetInfo(Record):
    """A stored dataset: where it came from, when an image of it last changed, images per split."""

    id: int
    name: str
    source: str
    created_at: datetime
    changed_at: datetime | None
    images: dict[str, int]
    classes: int
    runs: int


@dataclass
class Edit(Record):
    """What an edit touched (or, with dry_run, would touch)."""

    action: str  # delete, relabel, rename, drop
    dataset: str
    dry_run: bool
    images: int = 0  # images deleted or relabelled
    splits: dict[str, int] = field(default_factory=dict)  # those images per split
    vectors: dict[str, int] = field(default_factory=dict)  # stored vectors deleted, per stage
    relabelled: dict[str, dict[str, int]] = field(default_factory=dict)  # new class -> {old class: images}
    unchanged: int = 0  # images chosen for a relabel that already had their class
    runs_no_longer_current: int = 0  # complete runs of the dataset that were current
    runs_dropped: int = 0
    renamed_to: str | None = None
    indexes_due: list[str] = field(default_factory=list)  # indexes the edit left due for a rebuild
    vacuumed: list[str] = field(default_factory=list)  # tables vacuumed after the edit
    vacuum_s: float | None = None  # the seconds that took
    not_vacuumed: str | None = None  # why the tables were left to autovacuum


@dataclass(frozen=True)
class _Chosen:
    id: int
    split: str
    label: int
    key: str


def glob_regex(pattern: str) -> str:
    """A path glob as an anchored regular expression that PostgreSQL and Python read alike."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "^" + "".join(out) + "$"


def stored_key(pattern: str, root: str) -> str:
    """The key (or key pattern) a path names: under the dataset's folder `root` when the path, taken
    from the working directory, lies there; else the path itself, relative to that folder."""
    path = os.path.realpath(os.path.expanduser(pattern))
    if os.path.isdir(root) and os.path.commonpath([path, root]) == root and path != root:
        return os.path.relpath(path, root).replace(os.sep, "/")
    return pattern.removeprefix("./")


class Editor:
    """The edits of one session's database."""

    def __init__(self, session: Session):
        self.session = session

    # ------------------------------------------------------------ datasets

    def datasets(self) -> list[DatasetInfo]:
        with self.session.connection() as conn:
            return [DatasetInfo(*r) for r in conn.execute(queries.DATASET_LIST).fetchall()]

    def rename(self, name: str, new_name: str, *, dry_run: bool = False) -> Edit:
        if not new_name.strip():
            raise UsageError("give the dataset a new name that is not empty")
        with self.session.connection() as conn:
            ds = catalog.dataset_id(conn, name)
            if conn.execute(queries.DATASET_BY_NAME, (new_name,)).fetchone() is not None:
                raise UsageError(f"a dataset named {new_name!r} exists already; choose another name or drop it first")
            if not dry_run:
                conn.execute(queries.RENAME_DATASET, (new_name, ds))
                conn.commit()
        self.session.forget()
        return Edit("rename", name, dry_run, renamed_to=new_name)

    def drop(self, name: str, *, dry_run: bool = False, vacuum: bool = False) -> Edit:
        """The dataset, its images and their vectors at every stage, its runs and clusterings."""
        with self.session.connection() as conn:
            ds = catalog.dataset_id(conn, name)
            edit = Edit("drop", name, dry_run, runs_dropped=db.scalar(conn, queries.RUNS_OF_DATASET, (ds,)))
            edit.vectors = _vectors(conn, queries.stored_vectors_of_dataset, ds)
            info = next(DatasetInfo(*r) for r in conn.execute(queries.DATASET_LIST).fetchall() if r[0] == ds)
            edit.splits, edit.images = dict(info.images), sum(info.images.values())
            if not dry_run:
                with conn.transaction():
                    db.one_connection_per_node(conn)
                    conn.execute(queries.DELETE_PREDICTIONS_OF_DATASET, (ds,))
                    conn.execute(queries.DELETE_RUNS_OF_DATASET, (ds,))
                    conn.execute(queries.DELETE_CLUSTERINGS_OF_DATASET, (ds,))
                    ids = [r[0] for r in conn.execute(queries.IMAGES_OF_DATASET, (ds,)).fetchall()]
                    self._delete_images(conn, ids)
                    conn.execute(queries.DELETE_CLASSES_OF_DATASET, (ds,))
                    conn.execute(queries.DELETE_DATASET, (ds,))
                    # last: a DROP INDEX locks its table against every search until the commit
                    indexes.drop_of_dataset(conn, ds)
                conn.commit()
                edit.vacuumed, edit.vacuum_s, edit.not_vacuumed = _vacuum(conn, list(edit.vectors), vacuum)
        self.session.forget()
        return edit

    # ------------------------------------------------------------ images

    def choose(
        self,
        conn: psycopg.Connection,
        dataset: int,
        split: str | None,
        paths: list[str],
        ids: list[int],
    ) -> list[_Chosen]:
        """The images of `dataset` (and `split`) that `paths` (files or globs) and `ids` name; every
        path and id must name at least one."""
        params = {"dataset": dataset, "split": split}
        chosen: dict[int, _Chosen] = {}

        def found(statement: str, **more) -> list[_Chosen]:
            rows = [_Chosen(*r) for r in conn.execute(statement, {**params, **more}).fetchall()]
            chosen.update((c.id, c) for c in rows)
            return rows

        if not paths and not ids:
            if split is None:
                raise UsageError(
                    "choose the images: --split, --id, or files and globs (every image of a dataset: "
                    "'clipvdb dataset drop')"
                )
            found(queries.IMAGES_OF_SPLIT)
        if ids:
            missing = set(ids) - {c.id for c in found(queries.IMAGES_BY_ID, ids=ids)}
            if missing:
                where = f"split {split!r} of " if split else ""
                raise UsageError(f"no image {min(missing)} in {where}this dataset; 'clipvdb dataset list' shows it")
        if paths:
            root = db.scalar(conn, queries.DATASET_SOURCE, (dataset,))
            keys = {p: stored_key(p, root) for p in paths}
            exact = [k for k in keys.values() if not _GLOB.search(k)]
            globs = {k: glob_regex(k) for k in keys.values() if _GLOB.search(k)}
            hit = {c.key for c in found(queries.IMAGES_BY_KEY, keys=exact)} if exact else set()
            if globs:
                matched = [c.key for c in found(queries.IMAGES_BY_PATTERN, patterns=list(globs.values()))]
                hit |= {k for k, rx in globs.items() if any(re.match(rx, m) for m in matched)}
            for p, k in keys.items():
                if k not in hit:
                    raise UsageError(self._no_match(conn, dataset, split, p, k, root))
        return sorted(chosen.values(), key=lambda c: c.id)

    @staticmethod
    def _no_match(conn: psycopg.Connection, dataset: int, split: str | None, path: str, key: str, root: str) -> str:
        like = [r[0] for r in conn.execute(queries.SOME_KEYS, (dataset,)).fetchall()]
        where = f"split {split!r} of the dataset" if split else "the dataset"
        return (
            f"{path!r} names no stored image of {where} (looked for key {key!r}; stored keys look like "
            f"{', '.join(repr(k) for k in like) or 'none'}, relative to {root}); give files or globs under that "
            "folder, absolute, relative to here, or to it"
        )

    def delete(
        self,
        dataset: str | None,
        *,
        split: str | None = None,
        paths: list[str] | None = None,
        ids: list[int] | None = None,
        dry_run: bool = False,
        vacuum: bool = False,
    ) -> Edit:
        """Delete the chosen images with their vectors at every stage (and their projections, learned
        images, cluster memberships and predictions); with `vacuum`, VACUUM the tables they left (_vacuum)."""
        with self.session.connection() as conn:
            ds = catalog.dataset_id(conn, dataset)
            name = catalog.dataset_name(conn, ds)
            chosen = self.choose(conn, ds, split, list(paths or []), list(ids or []))
            image_ids = [c.id for c in chosen]
            edit = Edit("delete", name, dry_run, images=len(chosen), splits=dict(Counter(c.split for c in chosen)))
            edit.vectors = _vectors(conn, queries.stored_vectors, image_ids)
            edit.runs_no_longer_current = db.scalar(conn, queries.CURRENT_RUNS, (ds,)) if chosen else 0
            if not dry_run and chosen:
                with conn.transaction():
                    db.one_connection_per_node(conn)
                    catalog.mark_changed(conn, ds)
                    self._delete_images(conn, image_ids)
                conn.commit()
                edit.indexes_due = _indexes_due(conn, list(edit.vectors))
                edit.vacuumed, edit.vacuum_s, edit.not_vacuumed = _vacuum(conn, list(edit.vectors), vacuum)
        self.session.forget()
        return edit

    @staticmethod
    def _delete_images(conn: psycopg.Connection, image_ids: list[int]) -> None:
        for stage in STAGES.values():
            conn.execute(queries.delete_vectors(stage), (image_ids,))
        conn.execute(queries.DELETE_DUPLICATES_OF, (image_ids, image_ids))
        conn.execute(queries.DELETE_IMAGES, (image_ids,))
        for stage in STAGES.values():
            db.recount(conn, stage.name)

    def relabel(
        self,
        dataset: str | None,
        to: str | None = None,
        *,
        split: str | None = None,
        paths: list[str] | None = None,
        ids: list[int] | None = None,
        table: str | Path | None = None,
        dry_run: bool = False,
    ) -> Edit:
        """Give the chosen images the class `to` (one of the dataset's), or each file of a CSV
        `table` of `source,class` rows (a header row of those names is skipped) its class."""
        with self.session.connection() as conn:
            ds = catalog.dataset_id(conn, dataset)
            name = catalog.dataset_name(conn, ds)
            classes = dict(conn.execute(queries.CLASSES, (ds,)).fetchall())
            label_of = {v: k for k, v in classes.items()}
            asked: list[tuple[str, list[str], list[int]]] = []
            if table is not None:
                if to is not None or paths or ids:
                    raise UsageError("give either --csv or files and a class, not both")
                asked = [(c, ps, []) for c, ps in _read_table(table).items()]
            else:
                if to is None:
                    raise UsageError("give the new class after the files: clipvdb relabel FILE... CLASS")
                if not paths and not ids:
                    raise UsageError("name the images to relabel: files or globs, or --id")
                asked = [(to, list(paths or []), list(ids or []))]
            for cls, _, _ in asked:
                if cls not in label_of:
                    raise UsageError(
                        f"dataset {name!r} has no class {cls!r} (it has: {', '.join(classes.values())}); "
                        "a relabel moves images between the dataset's classes"
                    )
            edit = Edit("relabel", name, dry_run)
            moves: list[tuple[int, list[int]]] = []
            seen: dict[int, str] = {}
            for cls, ps, chosen_ids in asked:
                chosen = self.choose(conn, ds, split, ps, chosen_ids)
                for c in chosen:
                    if seen.setdefault(c.id, cls) != cls:
                        raise UsageError(f"{c.key!r} is given two classes ({seen[c.id]!r} and {cls!r}); give it one")
                new = label_of[cls]
                moving = [c for c in chosen if c.label != new]
                edit.unchanged += len(chosen) - len(moving)
                if moving:
                    edit.relabelled[cls] = dict(Counter(classes[c.label] for c in moving))
                    moves.append((new, [c.id for c in moving]))
                    for c in moving:
                        edit.splits[c.split] = edit.splits.get(c.split, 0) + 1
            edit.images = sum(len(i) for _, i in moves)
            edit.runs_no_longer_current = db.scalar(conn, queries.CURRENT_RUNS, (ds,)) if moves else 0
            if not dry_run and moves:
                with conn.transaction():
                    db.one_connection_per_node(conn)
                    for label, image_ids in moves:
                        conn.execute(queries.RELABEL, (label, image_ids, label))
                    catalog.mark_changed(conn, ds)
                conn.commit()
        self.session.forget()
        return edit


def _vectors(conn: psycopg.Connection, count_of: Callable[[Stage], sql.Composed], param: object) -> dict[str, int]:
    """Stored vectors per stage that `count_of(stage)` (a count statement of one parameter) counts,
    stages with none left out."""
    counts = {stage.name: db.scalar(conn, count_of(stage), (param,)) for stage in STAGES.values()}
    return {name: n for name, n in counts.items() if n}


def _vacuum(conn: psycopg.Connection, stages: list[str], wanted: bool) -> tuple[list[str], float | None, str | None]:
    """VACUUM the tables of `stages` after a delete, when asked: their indexes drop the deleted rows'
    entries and an hnsw graph is repaired now, not while later searches step over the dead entries.
    Not by default: pgvector's hnsw vacuum repairs the graph around every deleted element, which at
    200,000 rows took 220 s after a tenth was deleted (a fresh build: 41 s), while autovacuum does
    the same in the background. Only where pgvector vacuums hnsw safely (db.SAFE_HNSW_VACUUM); else
    they are left to autovacuum and the reason returned. Returns (tables vacuumed, the seconds it
    took, reason none were)."""
    if not stages or not wanted:
        return [], None, None
    version = db.scalar(conn, db.PGVECTOR_VERSION)
    conn.rollback()
    if db.version_tuple(version) < db.version_tuple(db.SAFE_HNSW_VACUUM):
        fixes = "; ".join(db.pgvector_lacks(version)[:2])
        return (
            [],
            None,
            (
                f"pgvector {version} lacks the fixes to vacuum an hnsw index safely ({fixes}); "
                f"its tables are left to autovacuum: upgrade pgvector to >= {db.PGVECTOR_WANTED}"
            ),
        )
    tables = [t for s in stages for t in (STAGES[s].table, STAGES[s].projection_table, STAGES[s].learned_table)]
    start = time.perf_counter()
    conn.autocommit = True  # VACUUM runs outside a transaction
    try:
        for table in tables:
            conn.execute(queries.vacuum(table))
    finally:
        conn.autocommit = False
    return tables, round(time.perf_counter() - start, 3), None


def _indexes_due(conn: psycopg.Connection, stages: list[str]) -> list[str]:
    """The indexes at `stages` that the rows stored now leave due for a rebuild, a line each."""
    out = []
    names = catalog.dataset_names(conn)
    for space, dataset in catalog.stored_space_datasets(conn, [STAGES[s] for s in stages]):
        due = indexes.info(conn, space, dataset).due()
        if due is not None:
            out.append(f"the index of {space.label} in {names[dataset]!r}: {due}")
    conn.rollback()
    return out


def _read_table(path: str | Path) -> dict[str, list[str]]:
    """A relabel CSV: class -> the files (or globs) given it."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if rows and [x.strip().lower() for x in rows[0]] == ["source", "class"]:
        rows = rows[1:]
    out: dict[str, list[str]] = {}
    for n, r in enumerate(rows, 1):
        if len(r) != 2 or not r[0].strip() or not r[1].strip():
            raise UsageError(f"{path}: row {n} is {','.join(r)!r}; each row is source,class")
        out.setdefault(r[1].strip(), []).append(r[0].strip())
    if not out:
        raise UsageError(f"{path} has no source,class rows")
    return out
