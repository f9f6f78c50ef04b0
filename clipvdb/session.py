"""`Session`: what every job runs on. The database (its URL, the schema brought to head once, a
connection pool), the encoder loaded on first use, the stored datasets and set-up kNN searchers
cached. The Store holds one and hands it to each job; a job takes it as its first argument and never
calls back into the Store.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg

from . import catalog, config, db, embedded, queries
from .encoder import Encoder, load_encoder
from .errors import EmptyStageError, SchemaError, StageError, UsageError
from .knn import KnnSearcher, SearchSettings
from .options import SessionOptions
from .stages import STAGES, Stage, needs_encoder, parse_stages

if TYPE_CHECKING:
    from psycopg_pool import ConnectionPool

StagesArg = str | Iterable[str] | list[Stage] | None


@dataclass(frozen=True)
class Dataset:
    id: int
    name: str
    classes: list[str]


def parse(value: StagesArg | Stage) -> list[Stage]:
    """Stages by name (or as given), before any model says what width each has."""
    if isinstance(value, Stage):
        return [value]
    if isinstance(value, list) and value and isinstance(value[0], Stage):
        return value
    return parse_stages(value)  # type: ignore[arg-type]


class Session:
    """One database and one model, with what the jobs share: connections, the encoder, caches."""

    def __init__(
        self,
        url: str | None = None,
        options: SessionOptions | None = None,
        *,
        encoder: Encoder | None = None,
        announce: Callable[[str], None] | None = None,
        **changes: object,
    ):
        """`options` (or its fields as keywords: home, model, pretrained, device, pool_size, migrate);
        `encoder` in place of loading `model`; `announce(line)` for the schema upgrade's notice."""
        o = replace(options or SessionOptions(), **changes)  # type: ignore[arg-type]
        self.options = o
        self.given_url = url
        self.home = Path(o.home).expanduser() if o.home else None
        self.model, self.pretrained, self.device = o.model, o.pretrained, o.device
        self._encoder = encoder
        self.pool_size = o.pool_size
        self.migrate = o.migrate
        self.announce = announce or (lambda m: print(m, file=sys.stderr))
        self._lock = threading.Lock()
        self._datasets: dict[str | None, Dataset] = {}
        self._searchers: dict[tuple, KnnSearcher] = {}
        self._ready = False
        self.pgvector: tuple[int, ...] = ()

    def beside(self, model: str) -> Session:
        """A session on the same database for another model (with its default weights)."""
        options = replace(self.options, model=model, pretrained=None)
        return Session(self.given_url, options, announce=self.announce)

    @property
    def home_dir(self) -> Path:
        """The home: given, else CLIPVDB_HOME, else the user data directory."""
        return self.home or embedded.home_dir()

    @property
    def embedded(self) -> bool:
        """True when the database is this home's embedded server (no URL given or set)."""
        return not (self.given_url or config.database_url())

    # ------------------------------------------------------------ connections

    @functools.cached_property
    def url(self) -> str:
        """The database URL: given, else CLIPVDB_DATABASE_URL, else the embedded server (started)."""
        return db.resolve_url(self.given_url, self.home)

    def prepare(self) -> None:
        """Once per session: pgvector present and new enough, the schema at head (upgraded if older)."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            with db.connection(self.url, vector=False) as conn:
                rev = db.revision_of(conn)
            head = db.head_revision()
            if rev != head:
                if rev is not None and not db.is_known_revision(rev):
                    raise SchemaError(
                        f"the database schema is at revision {rev}, newer than this clipvdb ({head}); "
                        "upgrade clipvdb (pip install -U clipvdb)"
                    )
                if not self.migrate:
                    raise db.schema_behind(rev)
                self.announce(f"clipvdb: bringing the database schema from {rev or 'nothing'} to revision {head}")
                db.upgrade(self.url)
            with db.connection(self.url) as conn:
                self.pgvector = db.version_tuple(db.check_pgvector(conn))
            self._ready = True

    @functools.cached_property
    def pool(self) -> ConnectionPool:
        from psycopg_pool import ConnectionPool  # its import starts threads machinery; only when connecting

        self.prepare()

        def configure(conn: psycopg.Connection) -> None:
            from pgvector.psycopg import register_vector

            register_vector(conn)
            conn.commit()

        def reset(conn: psycopg.Connection) -> None:
            conn.execute(queries.RESET_ALL)  # session settings (an experiment's) stay with their user
            conn.execute(queries.ADVISORY_UNLOCK_ALL)  # and so do session locks a job left held
            conn.commit()

        try:
            return ConnectionPool(
                self.url,
                min_size=1,
                max_size=max(self.pool_size, 2),
                configure=configure,
                reset=reset,
                open=True,
                name="clipvdb",
                timeout=30,
                check=ConnectionPool.check_connection,
            )
        except psycopg.OperationalError as exc:
            raise db.connection_error(exc) from exc

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection with pgvector registered; rolled back when returned with work open."""
        with self.pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def connections(self, n: int) -> Iterator[list[psycopg.Connection]]:
        """`n` pooled connections at once (a job's parallel searches)."""
        with contextlib.ExitStack() as stack:
            yield [stack.enter_context(self.pool.connection()) for _ in range(n)]

    def close(self) -> None:
        if "pool" in self.__dict__:
            self.pool.close()
            del self.__dict__["pool"]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reconnect(self) -> None:
        """Forget the server: the next connection resolves the URL and checks the schema again (after
        the embedded server stopped, or became a cluster's coordinator)."""
        self.close()
        self.__dict__.pop("url", None)
        self._ready = False
        self.forget()

    def mark_failed(self, run_id: int) -> None:
        """A run cut short stays out of the reports. On a fresh connection: the pool's may be what failed."""
        with contextlib.suppress(psycopg.Error, SchemaError, db.DatabaseError):
            with db.connection(self.url, vector=False) as conn:
                conn.execute(queries.FAIL_RUN, (run_id,))
                conn.commit()

    # ------------------------------------------------------------ the model and its stages

    @property
    def encoder(self) -> Encoder:
        """The encoder (loaded on first use: stage first never needs it)."""
        if self._encoder is None:
            self._encoder = load_encoder(
                self.model, self.pretrained or config.DEFAULT_PRETRAINED, self.device, home=self.home_dir
            )
        return self._encoder

    @encoder.setter
    def encoder(self, value: Encoder) -> None:
        self._encoder = value
        self._searchers.clear()

    def encoder_for(self, stages: list[Stage]) -> Encoder | None:
        """The encoder when a stage needs one (stage first is pixels: none)."""
        return self.encoder if needs_encoder(stages) else None

    def stages(self, value: StagesArg | Stage) -> list[Stage]:
        """Stages by name, as this session's model declares them (its widths); stage first needs no model."""
        chosen = parse(value)
        if not needs_encoder(chosen):
            return chosen
        declared = getattr(self.encoder, "stages", STAGES)  # an encoder that declares none has RN50's
        missing = [s.name for s in chosen if s.uses_clip and s.name not in declared]
        if missing:
            raise StageError(
                f"stages {', '.join(missing)} need a CLIP ResNet or vision transformer (RN50, ViT-B-32, ...); "
                f"{self.encoder.name} "
                f"computes {', '.join(declared)}; use --stage {' or '.join(declared)}"
            )
        return [declared[s.name] if s.uses_clip else s for s in chosen]

    def one(self, value: StagesArg | Stage, what: str) -> Stage:
        """Exactly one stage, for a job that works on one (`what` names it in the error)."""
        chosen = self.stages(value)
        if len(chosen) != 1:
            raise UsageError(f"{what} one stage at a time (--stage first, second, third or origin)")
        return chosen[0]

    def stored_stages(self) -> list[Stage]:
        """The stages that hold rows, as this session's model declares them."""
        with self.connection() as conn:
            names = catalog.stages_with_rows(conn)
        if not names:
            raise EmptyStageError("nothing is stored yet; run 'clipvdb ingest --stage first --data SRC' first")
        return self.stages(names)

    def space(self, conn: psycopg.Connection, stage: Stage) -> catalog.Space:
        """The stage's embedding space under this session's encoder (id 0 while nothing is stored)."""
        encoder = self.encoder_for([stage])
        space = catalog.find_space(conn, stage, encoder)
        return catalog.Space(space or 0, stage, *catalog.space_identity(stage, encoder))

    def require_space(self, conn: psycopg.Connection, stage: Stage) -> catalog.Space:
        """The stage's embedding space under this session's encoder; an error when it holds nothing."""
        space = self.space(conn, stage)
        if not space.id:
            raise EmptyStageError(f"stage {stage.name} has no rows for these weights; run 'clipvdb ingest' first")
        return space

    def identity(self, stage: Stage) -> tuple[str, str]:
        """(model, weights) of the stage's embedding space under this session's encoder."""
        return catalog.space_identity(stage, self.encoder if stage.uses_clip else None)

    # ------------------------------------------------------------ caches

    def dataset(self, name: str | None = None) -> Dataset:
        """A stored dataset (the only one when no name is given), with its class names."""
        if name not in self._datasets:
            with self.connection() as conn:
                ds = catalog.dataset_id(conn, name)
                self._datasets[name] = Dataset(ds, catalog.dataset_name(conn, ds), catalog.class_names(conn, ds))
        return self._datasets[name]

    def searcher(self, stage: Stage, dataset_id: int, split: str, settings: SearchSettings) -> KnnSearcher:
        """The set-up kNN searcher of one stage over one split of a dataset (cached)."""
        key = (stage.name, dataset_id, split, settings, self.identity(stage))
        if key not in self._searchers:
            with self.connection() as conn:
                self._searchers[key] = KnnSearcher(
                    conn,
                    stage,
                    self.identity(stage),
                    dataset_id,
                    split,
                    settings,
                    iterative_scan=self.pgvector >= (0, 8, 0),
                    notice=self.announce,
                )
        return self._searchers[key]

    def forget(self) -> None:
        """Drop cached searchers and datasets (after the stored rows or an index changed)."""
        self._searchers.clear()
        self._datasets.clear()
