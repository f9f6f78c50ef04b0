"""The clipvdb command line: each command reads its input, calls one Store method, prints.

Nothing heavy is imported at module level: `clipvdb --help` and stage first never import torch.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import click

from . import __version__, config
from .errors import ClipvdbError, SkippedImagesError, Terminated, UsageError
from .options import (
    CLUSTER_METHODS,
    INDEX_KINDS,
    LEARN_METHODS,
    ClassifyOptions,
    ClusterOptions,
    DuplicatesOptions,
    EvaluateOptions,
    ExperimentOptions,
    IndexOptions,
    IngestOptions,
    LearnOptions,
    TrainOptions,
)
from .output import print_json as _print_json
from .output import print_plain, print_table
from .output import progress as _progress
from .stages import STAGE_CHOICES, STAGE_NAMES, Stage, parse_stages

if TYPE_CHECKING:
    from .knn import SearchSettings
    from .nodes import NodesStatus
    from .reports import Report
    from .store import Store


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click declares a class-wide default


@dataclass
class State:
    """Shared state of one invocation (ctx.obj)."""

    database_url: str | None = None
    home: Path | None = None
    debug: bool = False
    model: str = config.DEFAULT_MODEL
    pretrained: str | None = None  # None: the default, openai
    device: str = config.DEFAULT_DEVICE

    @cached_property
    def store(self) -> Store:
        from .store import Store  # numpy, psycopg and PIL: kept off the start-up of --help

        return Store(
            self.database_url, home=self.home, model=self.model, pretrained=self.pretrained, device=self.device
        )

    @property
    def url(self) -> str:
        return self.store.url

    def per_model(self) -> list[State]:
        """One state per model of a `--model A,B` list (the same database), in the order given;
        with one model, this state. A list takes each model's own default weights."""
        names = [m.strip() for m in self.model.split(",") if m.strip()]
        if len(names) <= 1:
            return [self]
        if self.pretrained:
            raise UsageError("--pretrained names one model's weights; give it with one --model, not a list")
        return [replace(self, model=name) for name in names]

    def close(self) -> None:
        if "store" in self.__dict__:
            self.store.close()


# Exit codes: 1 runtime error, 2 usage, 3 skipped images (ingest), 130 interrupted (SIGINT, Ctrl-C),
# 143 terminated (SIGTERM). docs/faults.md has the whole table.
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


@contextlib.contextmanager
def _sigterm_cancels() -> Iterator[threading.Event]:
    """While a command runs, SIGTERM cancels it like Ctrl-C (Terminated, a KeyboardInterrupt, raised in
    the main thread): the open batch rolls back, decoding workers and the pool close, exit 143. The
    event yielded says whether it fired (a server loop such as werkzeug's swallows KeyboardInterrupt
    and returns). Only in the main thread (Python delivers signals there); the previous handler
    comes back after."""
    fired = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield fired
        return

    def cancel(signum: int, frame: object) -> None:
        fired.set()
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        yield fired
    finally:
        signal.signal(signal.SIGTERM, previous)


class ClipvdbGroup(click.Group):
    """Turns library errors into one-line messages (tracebacks only with --debug)."""

    def invoke(self, ctx: click.Context):
        try:
            with _sigterm_cancels() as terminated:
                out = super().invoke(ctx)
                if terminated.is_set():
                    raise Terminated()
                return out
        except ClipvdbError as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            raise CliError(str(exc), exc.exit_code) from exc
        except Terminated:
            click.echo("clipvdb: terminated (SIGTERM); open work was rolled back", err=True)
            ctx.exit(EXIT_TERMINATED)
        except KeyboardInterrupt:
            click.echo("clipvdb: interrupted; the open batch was rolled back", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except Exception as exc:
            if ctx.obj is not None and ctx.obj.debug:
                raise
            import psycopg  # loaded already when a database error gets here; kept off the start-up of --help

            if not isinstance(exc, psycopg.Error):
                raise
            first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            if isinstance(exc, psycopg.errors.DiskFull):
                full = f"the database's disk is full ({first}); free space, then run the command again"
                raise CliError(full) from exc
            if isinstance(exc, psycopg.OperationalError):
                raise CliError(f"lost the database connection ({first}); run the command again") from exc
            raise CliError(f"the database refused: {first}; run with --debug for the details") from exc


def _store(name: str):
    def callback(ctx: click.Context, param: click.Parameter, value):
        if value is not None:
            setattr(ctx.ensure_object(State), name, value)
        return value

    return callback


def model_options(f):
    """--model, --pretrained, --device: stored in ctx.obj."""
    f = click.option(
        "--device",
        envvar=config.ENV_DEVICE,
        expose_value=False,
        callback=_store("device"),
        help="cpu, cuda, mps (default: auto: cuda, then mps, then cpu).",
    )(f)
    f = click.option(
        "--pretrained",
        envvar=config.ENV_PRETRAINED,
        expose_value=False,
        callback=_store("pretrained"),
        help="Weights: an open_clip tag (default openai), a checkpoint PATH, or random.",
    )(f)
    f = click.option(
        "--model",
        envvar=config.ENV_MODEL,
        expose_value=False,
        callback=_store("model"),
        help="open_clip model name (default RN50), efficientnet-lite0, a checkpoint .pt, or 'tiny' (a no-torch "
        "test encoder); ingest and evaluate take a comma-separated list.",
    )(f)
    return f


def learned_option(f):
    return click.option(
        "--learned", is_flag=True, help="Search the stage's learned space (clipvdb learn), not the raw vectors."
    )(f)


def _gathered(name: str, build, options: list):
    """Click options whose values reach the command as one object: `build(**values)`, passed as `name`.
    Every command that shares the options uses the one decorator, so an option is declared once."""

    def decorate(f):
        @functools.wraps(f)
        def command(*args, **kwargs):
            values = {k: kwargs.pop(k) for k in keys}
            return f(*args, **{name: build(**values)}, **kwargs)

        have = len(getattr(command, "__click_params__", []))
        for option in reversed(options):
            command = option(command)
        keys = [p.name for p in command.__click_params__[have:]]
        return command

    return decorate


def _metric_option():
    return click.option(
        "--metric",
        type=click.Choice(["l2", "cosine", "ip"]),
        default="l2",
        show_default=True,
        help="Distance: l2 (the study's), cosine, or inner product.",
    )


def _run_option():
    return click.option("--run", "run", type=int, help="Run id (default: the latest complete run).")


def _exact_option():
    return click.option("--exact", is_flag=True, help="Exact search: index scans off (ground truth).")


def _search_settings(several: bool):
    def build(k, vote, probes, ef_search, candidates, exact, metric, learned):
        from .knn import SearchSettings  # numpy and psycopg: kept off the start-up of --help

        ks = _ints(str(k))
        if len(ks) > 1 and not several:
            raise UsageError("several --k values are for evaluate; give one k here")
        return SearchSettings(
            vote=vote,
            ks=tuple(ks) if len(ks) > 1 else (),
            k=ks[0],
            exact=exact,
            probes=probes,
            ef_search=ef_search,
            metric=metric,
            candidates=candidates,
            learned=learned,
        )

    return build


def _search_option_list(k: int) -> list:
    return [
        click.option(
            "--k",
            "k",
            default=str(k),
            show_default=True,
            help="Neighbors that vote. evaluate takes several (--k 1,5,20): the first decides the stored "
            "predictions, and report_accuracy_by_k gives every k and vote from the same search.",
        ),
        click.option(
            "--vote",
            type=click.Choice(["majority", "weighted", "dino"]),
            default="majority",
            show_default=True,
            help="How k > 1 neighbors decide: majority (ties to the nearest), weighted (1/distance), "
            "dino (exp(cosine similarity / 0.07)).",
        ),
        click.option(
            "--probes",
            type=click.IntRange(1),
            help="ivfflat.probes (default: lists/5; projected index: lists/20, 50 above 100,000 rows; at least 5 "
            "lists and 1,000 rows scanned).",
        ),
        click.option(
            "--ef-search",
            type=click.IntRange(1),
            help=f"hnsw.ef_search (default: {config.DEFAULT_EF_SEARCH}; stage first's default hnsw: "
            f"{config.PROJECTED_EF_SEARCH} x rows per distinct vector, at most {config.PROJECTED_EF_SEARCH_MAX}).",
        ),
        click.option(
            "--candidates",
            type=click.IntRange(1),
            help="Projected index: candidates re-ranked exactly (default: max(20, 4k)).",
        ),
        _exact_option(),
        _metric_option(),
        learned_option,
    ]


def search_options(several: bool = False, k: int = config.DEFAULT_K):
    """--k, --vote, --probes, --ef-search, --candidates, --exact, --metric, --learned: one
    `settings` (knn.SearchSettings). `several`: --k takes a list (evaluate); `k`: its default."""
    return _gathered("settings", _search_settings(several), _search_option_list(k))


def _workers_option():
    return click.option(
        "--workers", type=click.IntRange(0), help="Image-decoding processes (default: cores - 1, at most 4)."
    )


def _limit_option(*also: str):
    return click.option("--limit", *also, "limit", type=click.IntRange(1), help="Only the first N images of the split.")


def _against_option():
    return click.option("--against", default="train", show_default=True, help="Stored split to search.")


def _prompts_option():
    return click.option(
        "--prompts", default="study", show_default=True, help="Zero-shot prompts for origin: study, photo, or 'a {}'."
    )


def classify_options(f):
    """--dataset, --against, --prompts, --batch-size: one `options` (options.ClassifyOptions)."""
    return _gathered(
        "options",
        ClassifyOptions,
        [
            dataset_option(what="Dataset whose rows to search"),
            _against_option(),
            _prompts_option(),
            click.option(
                "--batch-size", type=click.IntRange(1), default=32, show_default=True, help="Images per batch."
            ),
        ],
    )(f)


def ingest_options(f):
    """--split, --limit, --batch-size, --workers, --dataset, --strict, --index/--no-index: one
    `options` (options.IngestOptions)."""
    return _gathered(
        "options",
        IngestOptions,
        [
            click.option("--split", default="train", show_default=True),
            _limit_option(),
            click.option(
                "--batch-size",
                type=click.IntRange(1),
                help="Images per batch and transaction (default: 256 for stage first alone, else 64).",
            ),
            _workers_option(),
            dataset_option("from the source", "Dataset name"),
            click.option("--strict", is_flag=True, help="Stop at the first bad image instead of skipping it."),
            click.option(
                "--index/--no-index",
                "build_index",
                default=True,
                show_default=True,
                help="Rebuild the stage's index afterwards.",
            ),
        ],
    )(f)


def evaluate_options(f):
    """--split, --against, --limit (the study's --num), --batch-size, --workers, --connections,
    --display-freq, --dataset, --prompts: one `options` (options.EvaluateOptions)."""
    return _gathered(
        "options",
        EvaluateOptions,
        [
            click.option("--split", default="test", show_default=True),
            _against_option(),
            _limit_option("--num"),
            click.option(
                "--batch-size",
                type=click.IntRange(1),
                help=f"Images per search statement (default: {config.DEFAULT_EVAL_BATCH_SIZE}; "
                f"{config.DEFAULT_EVAL_BATCH_SIZE_DISTRIBUTED} on Citus).",
            ),
            _workers_option(),
            click.option(
                "--connections",
                type=click.IntRange(1),
                default=2,
                show_default=True,
                help="Database connections searching batches at once.",
            ),
            click.option(
                "--display-freq",
                type=click.IntRange(0),
                default=10,
                show_default=True,
                help="Print running accuracy every F batches (0: never).",
            ),
            dataset_option("from the source", "Dataset name"),
            _prompts_option(),
        ],
    )(f)


def train_options(f):
    """--split, --name, --minutes, --epochs, --widths, --batch-size, --lr, --seed, --limit, --workers:
    one `options` (options.TrainOptions)."""

    def build(widths: str, **values) -> TrainOptions:
        return TrainOptions(widths=tuple(_ints(widths)), **values)

    return _gathered(
        "options",
        build,
        [
            click.option(
                "--split", default="train", show_default=True, help="The split to train on (only this one is read)."
            ),
            click.option(
                "--base",
                help="Fine-tune this network instead: efficientnet-lite0, lite1 or lite2 (@SIZE for another "
                "input size, e.g. efficientnet-lite0@160).",
            ),
            click.option(
                "--name",
                help="The model's name, carried by its vectors (default: cnn; with --base, e.g. lite0-160-tuned).",
            ),
            click.option(
                "--minutes",
                type=click.FloatRange(0.1),
                default=13.0,
                show_default=True,
                help="Time budget: picks the epochs.",
            ),
            click.option("--epochs", type=click.IntRange(1), help="Epochs (default: as many as fit in --minutes)."),
            click.option(
                "--widths", default="48,96,192", show_default=True, help="The compact CNN's three blocks' channels."
            ),
            click.option(
                "--batch-size", type=click.IntRange(2), help="Images per step (default: 512; 64 with --base)."
            ),
            click.option(
                "--lr",
                type=click.FloatRange(0, min_open=True),
                help="Peak learning rate (default: 0.4; 0.05 with --base).",
            ),
            click.option("--seed", type=int, default=0, show_default=True),
            click.option("--limit", "limit", type=click.IntRange(1), help="Train on the first N images of the split."),
            click.option("--workers", type=click.IntRange(0), help="Decoding processes (default: one per core)."),
        ],
    )(f)


def cluster_options(f):
    """--k, --method, --eps, --min-samples, --linkage, --split, --dataset, --sample: one `options`
    (options.ClusterOptions)."""
    return _gathered(
        "options",
        ClusterOptions,
        [
            click.option(
                "--k",
                "k",
                type=click.IntRange(1),
                default=10,
                show_default=True,
                help="Clusters (kmeans, agglomerative).",
            ),
            click.option("--method", type=click.Choice(CLUSTER_METHODS), default="kmeans", show_default=True),
            click.option(
                "--eps", type=click.FloatRange(0, min_open=True), default=0.5, show_default=True, help="DBSCAN radius."
            ),
            click.option(
                "--min-samples", type=click.IntRange(1), default=5, show_default=True, help="DBSCAN core size."
            ),
            click.option(
                "--linkage",
                type=click.Choice(["ward", "complete", "average", "single"]),
                default="ward",
                show_default=True,
                help="Agglomerative linkage.",
            ),
            click.option("--split", default="train", show_default=True, help="Stored split to cluster."),
            dataset_option(),
            click.option("--sample", type=click.IntRange(2), help="Cluster a seeded random sample of N rows."),
        ],
    )(f)


def index_options(f):
    """--kind, --project, --lists, --m, --ef-construction, --metric, --dataset, --model: one `options`
    (options.IndexOptions)."""
    return _gathered(
        "options",
        IndexOptions,
        [
            click.option(
                "--kind",
                type=click.Choice(INDEX_KINDS),
                help="Index kind (default: the stage's rule; first: ivfflat --project 64, hnsw --project 64 above "
                "100,000 rows per index; others: ivfflat).",
            ),
            click.option(
                "--project",
                type=click.IntRange(0, 2000),
                help="Index a D-dimensional PCA projection and re-rank candidates exactly (0: full vectors).",
            ),
            click.option(
                "--lists", type=click.IntRange(1), help="ivfflat lists (default: rows/1000, sqrt(rows) above 1M)."
            ),
            click.option("--m", "m", type=click.IntRange(2), help=f"hnsw m (default: {config.DEFAULT_M})."),
            click.option(
                "--ef-construction",
                type=click.IntRange(4),
                help=f"hnsw ef_construction (default: {config.DEFAULT_EF_CONSTRUCTION}; stage first's default hnsw: "
                f"{config.PROJECTED_EF_CONSTRUCTION}).",
            ),
            _metric_option(),
            dataset_option("every dataset", "Rebuild this dataset's indexes only"),
            click.option(
                "--model",
                "model",
                help="Rebuild this model's indexes only: its name as 'clipvdb models' lists it (default: every "
                "model's; stage first's model is 'pixels').",
            ),
        ],
    )(f)


def learn_options(f):
    """--dims, --method, --seconds, --dataset: one `options` (options.LearnOptions)."""
    return _gathered(
        "options",
        LearnOptions,
        [
            click.option("--dims", type=click.IntRange(1), help="Learned dimensions (default 128; lda: classes - 1)."),
            click.option(
                "--method",
                type=click.Choice(LEARN_METHODS),
                default="nca",
                show_default=True,
                help="nca: linear map trained on in-batch neighbors; mlp: two-layer network trained through a "
                "classifier (not linear); lda: discriminant analysis; pca: reference.",
            ),
            click.option(
                "--seconds",
                type=click.FloatRange(1),
                default=120.0,
                show_default=True,
                help="nca's and mlp's training budget.",
            ),
            dataset_option(),
        ],
    )(f)


def stage_option(default: str | None = "", *, one: bool = False, note: str = ""):
    """--stage, declared here for every command: required when `default` is "", else defaulting to it
    (None: no default, the command decides); `one`: the command takes one stage."""
    text = note or ("One stage." if one else STAGE_CHOICES)
    required = default == ""
    return click.option(
        "--stage",
        "stage",
        required=required,
        default=None if required else default,
        show_default=not required and default is not None,
        help=text,
    )


def dataset_option(default: str = "the only one", what: str = "Dataset"):
    """--dataset, declared here for every command: a stored dataset's name."""
    return click.option("--dataset", help=f"{what} (default: {default}).")


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")(f)


def _stages(value: str) -> list[Stage]:
    return parse_stages(value)


@click.group(cls=ClipvdbGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    envvar=config.ENV_DATABASE_URL,
    help="PostgreSQL URL with pgvector >= 0.7 (default: the embedded server).",
)
@click.option(
    "--home",
    envvar=config.ENV_HOME,
    type=click.Path(path_type=Path),
    help="Where the embedded server keeps its data (default: user data dir).",
)
@click.option("--debug", is_flag=True, envvar=config.ENV_DEBUG, help="Show tracebacks.")
@click.version_option(__version__, prog_name="clipvdb")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, home: Path | None, debug: bool) -> None:
    """Classify images by nearest-neighbor search over per-stage CLIP embeddings in PostgreSQL.

    \b
    Example:
      clipvdb ingest --stage first --data cifar-10-python.tar.gz
      clipvdb classify cat.png --stage first
      psql "$(clipvdb db url)" -c 'SELECT * FROM report_accuracy'
    """
    state = ctx.ensure_object(State)
    state.database_url, state.home, state.debug = database_url, home, debug
    ctx.call_on_close(state.close)


# ---------------------------------------------------------------- db


@cli.group()
def db() -> None:
    """Manage the database: migrations, status, the embedded server.

    \b
    Example:
      clipvdb db upgrade && clipvdb db status
    """


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Alembic revision to upgrade to.")
@click.pass_obj
def db_upgrade(state: State, revision: str) -> None:
    """Create or upgrade the schema (Alembic, in-process).

    \b
    Example:
      clipvdb db upgrade
    """
    rev = state.store.upgrade(revision)
    click.echo(f"schema at revision {rev}")


@db.command("downgrade")
@click.argument("revision")
@click.pass_obj
def db_downgrade(state: State, revision: str) -> None:
    """Downgrade the schema to REVISION ('base' removes everything clipvdb created).

    \b
    Example:
      clipvdb db downgrade base
    """
    rev = state.store.downgrade(revision)
    click.echo(f"schema at revision {rev or 'base'}")


@db.command("status")
@json_option
@click.pass_obj
def db_status(state: State, as_json: bool) -> None:
    """Server and pgvector versions, schema revision, rows per stage, each stage's index and why.

    \b
    Example:
      clipvdb db status --json
    """
    info = state.store.status()
    if as_json:
        _print_json(info)
        return
    click.echo(f"server:     PostgreSQL {info['server_version']}")
    click.echo(f"pgvector:   {info['pgvector_version'] or 'not installed'}")
    if info["pgvector_lacks"]:
        lacks = "; ".join(info["pgvector_lacks"])
        click.echo(f"{'':<11} lacks the fixes of {lacks}: upgrade it to >= {info['pgvector_wanted']}")
    click.echo(f"revision:   {info['revision'] or 'none'} (head {info['head_revision']})")
    if info.get("citus_workers"):
        click.echo(f"citus:      distributed over {info['citus_workers']} workers (clipvdb db nodes status)")
    click.echo(f"images:     {info['images']}")
    for stage in STAGE_NAMES:
        if stage in info["rows_per_stage"]:
            click.echo(f"{stage + ':':<11} {info['rows_per_stage'][stage]} rows")
            spaces = [sp for sp in info["spaces"] if sp["stage"] == stage]
            for sp in spaces:
                model = f"{sp['model']} ({sp['rows']} rows) " if len(spaces) > 1 else ""
                missing = "" if sp["exists"] else " (not built yet: clipvdb index --stage " + stage + ")"
                click.echo(f"{'':<11} {model}index: {sp['why']}{missing}")


@db.command("url")
@click.pass_obj
def db_url(state: State) -> None:
    """Print the database URL (starts the embedded server if needed).

    \b
    Example:
      psql "$(clipvdb db url)"
    """
    click.echo(state.url)


@db.command("stop")
@click.pass_obj
def db_stop(state: State) -> None:
    """Stop the embedded server.

    \b
    Example:
      clipvdb db stop
    """
    if state.database_url:
        raise UsageError("db stop manages the embedded server only; unset --database-url/CLIPVDB_DATABASE_URL")
    stopped = state.store.stop()
    click.echo("embedded server stopped" if stopped else "embedded server was not running")


@db.command("grant-reader")
@click.argument("name")
@click.option("--password", envvar="CLIPVDB_READER_PASSWORD", help="Login password (external servers).")
@click.pass_obj
def db_grant_reader(state: State, name: str, password: str | None) -> None:
    """Create a read-only analyst role NAME: SELECT on every table and view, nothing else.

    On the embedded server, access to its unix socket is the security boundary (local trust
    authentication): the role gives least-privilege sessions, not protection from socket users.

    \b
    Example:
      clipvdb db grant-reader analyst --password s3cret
      psql "postgresql://analyst:s3cret@dbhost/clipvdb" -c 'SELECT * FROM report_accuracy'
    """
    state.store.grant_reader(name, password)
    click.echo(f"role {name} can read every table and view, and change nothing")


@db.group("nodes")
def db_nodes() -> None:
    """A local Citus cluster under CLIPVDB_HOME: the embedded server as coordinator plus workers.

    Once started, every command of this home (ingest, evaluate, classify, report, db url, serve)
    talks to the coordinator; the tables are distributed by image across the workers.

    \b
    Example:
      clipvdb db nodes start --workers 2 && clipvdb db nodes status
    """


def _print_nodes(info: NodesStatus) -> None:
    print_table("nodes", info["nodes"], ["node", "port", "role", "active"])
    rows = []
    for node, tables in info["per_node"].items():
        for table, t in tables.items():
            if "rows" in t:  # images and the stage tables; --json has every table
                rows.append(
                    {
                        "node": node,
                        "table": table,
                        "shards": t.get("shards"),
                        "rows": t["rows"],
                        "size_bytes": t.get("size_bytes"),
                    }
                )
    print_table("rows per node", rows, ["node", "table", "shards", "rows", "size_bytes"])
    dist = [t for t in info["tables"] if t["type"] == "distributed"]
    if dist:
        click.echo(f"distributed by image ({dist[0]['shards']} shards each): {', '.join(t['table'] for t in dist)}")
    refs = [t["table"] for t in info["tables"] if t["type"] == "reference"]
    click.echo(f"reference tables (a copy on every node): {', '.join(refs) or 'none'}")
    local = [t["table"] for t in info["tables"] if t["type"] == "local"]
    if local:
        click.echo(f"on the coordinator only: {', '.join(local)}")
    if info.get("error"):
        click.echo(f"rows and sizes incomplete: {info['error']}", err=True)


@db_nodes.command("start")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64), help="Worker nodes.")
@json_option
@click.pass_obj
def db_nodes_start(state: State, workers: int, as_json: bool) -> None:
    """Start the cluster (created on first use: Citus must be installed, see 'make citus').

    A home that already holds data keeps it: its tables are distributed to the workers.

    \b
    Example:
      clipvdb db nodes start --workers 2
    """
    info = state.store.start_nodes(workers)
    if as_json:
        _print_json(info)
        return
    _print_nodes(info)


@db_nodes.command("status")
@json_option
@click.pass_obj
def db_nodes_status(state: State, as_json: bool) -> None:
    """The nodes, shards per table and rows per node.

    \b
    Example:
      clipvdb db nodes status --json
    """
    info = state.store.nodes_status()
    if as_json:
        _print_json(info)
        return
    _print_nodes(info)


@db_nodes.command("add")
@click.option("--host", help="An external worker (PostgreSQL with Citus and pgvector); default: a new local one.")
@click.option("--port", default=5432, show_default=True, type=click.IntRange(1, 65535))
@json_option
@click.pass_obj
def db_nodes_add(state: State, host: str | None, port: int, as_json: bool) -> None:
    """Add a worker; its shards come with 'clipvdb db nodes rebalance'.

    \b
    Example:
      clipvdb db nodes add && clipvdb db nodes rebalance
      clipvdb db nodes add --host 10.0.0.7 --port 5432
    """
    info = state.store.add_node(host, port)
    if as_json:
        _print_json(info)
        return
    _print_nodes(info)


@db_nodes.command("rebalance")
@json_option
@click.pass_obj
def db_nodes_rebalance(state: State, as_json: bool) -> None:
    """Move shards until every worker holds its share, waiting to the end.

    Queries go on while shards move; writes to a moving shard wait for it.

    \b
    Example:
      clipvdb db nodes rebalance
    """
    progress, update = _progress("rebalance", unit="moves")
    moved = [0]

    def advance(done: int, total: int) -> None:
        update(done - moved[0], total)
        moved[0] = done

    with progress:
        result = state.store.rebalance(progress=advance)
    if as_json:
        _print_json(result)
        return
    if result["job"] is None:
        click.echo("every worker already holds its share: nothing moved")
    else:
        click.echo(f"rebalanced: {result['moves']} shard moves in {result['seconds']:.1f} s")


@db_nodes.command("remove")
@click.option("--host", help="An external worker to remove; default: the last local worker.")
@click.option("--port", default=5432, show_default=True, type=click.IntRange(1, 65535))
@json_option
@click.pass_obj
def db_nodes_remove(state: State, host: str | None, port: int, as_json: bool) -> None:
    """Drain a worker (its shards move to the others, nothing is lost), then remove it.

    \b
    Example:
      clipvdb db nodes remove
    """
    info = state.store.remove_node(host, port)
    if as_json:
        _print_json(info)
        return
    _print_nodes(info)


@db_nodes.command("stop")
@click.pass_obj
def db_nodes_stop(state: State) -> None:
    """Stop the coordinator and every worker (the next command of this home starts them again).

    \b
    Example:
      clipvdb db nodes stop
    """
    stopped = state.store.stop_nodes()
    click.echo(f"stopped {len(stopped)} nodes" if stopped else "no node was running")


# ---------------------------------------------------------------- embed


@cli.command()
@click.argument("images", nargs=-1, required=True)
@stage_option("origin")
@click.option("--format", "fmt", type=click.Choice(["json", "npy"]), default="json", show_default=True)
@model_options
@click.pass_obj
def embed(state: State, images: tuple[str, ...], stage: str, fmt: str) -> None:
    """Write embeddings of IMAGES to stdout (JSON lines, or one .npy array per stage).

    \b
    Example:
      clipvdb embed cat.png --stage second --pretrained random
      clipvdb embed a.png b.png --stage first --format npy > first.npy
    """
    stages = _stages(stage)
    out = state.store.embed(list(images), stages)
    if fmt == "npy":
        import numpy as np  # kept off the start-up of --help

        if len(stages) != 1:
            raise UsageError("--format npy writes one array; ask for one --stage")
        buf = io.BytesIO()
        np.save(buf, out[stages[0].name])
        sys.stdout.buffer.write(buf.getvalue())
        return
    for i, path in enumerate(images):
        for s in stages:
            click.echo(
                json.dumps(
                    {
                        "image": path,
                        "stage": s.name,
                        "dim": int(out[s.name].shape[1]),
                        "embedding": [round(float(x), 7) for x in out[s.name][i]],
                    }
                )
            )


# ---------------------------------------------------------------- ingest / index


@cli.command()
@stage_option()
@click.option(
    "--data", "data", required=True, help="cifar10, a CIFAR-10 python folder/archive, or SRC/<split>/<class>/."
)
@ingest_options
@model_options
@json_option
@click.pass_obj
def ingest(state: State, stage, data, options: IngestOptions, as_json) -> None:
    """Encode a labelled split at STAGE and store the vectors (resumable, idempotent).

    With a list of models, each model's vectors go into its own embedding spaces of the one database
    ('clipvdb models' lists them); --json then prints a list, a result per model.

    \b
    Example:
      clipvdb ingest --stage first --data cifar-10-python.tar.gz --limit 5000
      clipvdb ingest --stage all --data ./cifar10 --pretrained ~/RN50.pt
      clipvdb ingest --stage second,third --data ./cifar10 --model RN50,efficientnet-lite0
    """
    from .sources import open_source  # numpy: kept off the start-up of --help

    stages = _stages(stage)
    source = open_source(data)
    states, results = _for_each_model(
        state, "ingest", stages, lambda store, progress, update: store.ingest(source, stages, options, progress=update)
    )
    if as_json:
        _print_per_model_json(states, results)
    for result in results:
        if not as_json:
            _report_ingest(result)
    failed = [r for r in results if r.failed]
    if failed:
        raise SkippedImagesError(f"{len(failed[0].failed)} of {failed[0].total} images were skipped (listed above)")


def _for_each_model(state: State, verb: str, stages: list[Stage], run) -> tuple[list[State], list]:
    """`run(store, progress, update)` once per model of a --model list (one model: once), each
    model's weights loaded (or failing) before any progress bar starts; the states and results."""
    states = state.per_model()
    for each in states:
        each.store.encoder_for(stages)
    results = []
    for each in states:
        label = f"{verb} {','.join(s.name for s in stages)}" + (f" {each.model}" if len(states) > 1 else "")
        progress, update = _progress(label)
        with progress:
            results.append(run(each.store, progress, update))
        if each is not state:
            each.close()
    return states, results


@dataclass
class _WithLeaks:
    """An evaluate's result with its accuracy without the leaked test images beside it (--json)."""

    result: object
    without: dict | None

    def as_dict(self) -> dict:
        return {**self.result.as_dict(), "without_leaks": self.without}  # type: ignore[attr-defined]


def _print_per_model_json(states: list[State], results: list) -> None:
    """One model's result as it is; several as a list, each with its model."""
    dicts = [r.as_dict() for r in results]
    _print_json(dicts[0] if len(states) == 1 else [{"model": s.model, **d} for s, d in zip(states, dicts, strict=True)])


def _report_ingest(result) -> None:
    added = ", ".join(f"{k} +{v}" for k, v in result.inserted.items())
    click.echo(
        f"{result.dataset}/{result.split}: {result.total} images, {result.already_stored} already stored; "
        f"rows {added}; {result.seconds:.1f} s, {result.images_per_s:.1f} images/s"
    )
    for _key, reason in result.failed:
        click.echo(f"skipped: {reason}", err=True)
    if result.ignored:
        click.echo(f"ignored {len(result.ignored)} files without an image extension", err=True)


@cli.command()
@stage_option()
@index_options
@json_option
@click.pass_obj
def index(state: State, stage, options: IndexOptions, as_json) -> None:
    """Rebuild the ANN indexes of STAGE by hand (ingest keeps the kind chosen here).

    Each model's vectors at a stage are an embedding space, and each dataset's rows of a space
    have an index of their own ('clipvdb models' lists them); every one stored at STAGE is rebuilt
    (with --dataset, that dataset's; with --model, that model's). Without --kind, the stage's
    default. With --project D the
    index holds each vector's D principal components, and a query re-ranks its candidates by the
    exact distance on the full vector.

    \b
    Example:
      clipvdb index --stage first
      clipvdb index --stage first --kind hnsw --project 128 --m 16 --ef-construction 64
      clipvdb index --stage second --kind ivfflat --lists 100 --dataset cifar10
      clipvdb index --stage third --model efficientnet-lite0 --kind hnsw
    """
    infos = state.store.index(_stages(stage), options)
    names = {d.id: d.name for d in state.store.datasets()}
    out = [{**i.__dict__, "dataset": names.get(i.dataset, i.dataset)} for i in infos]
    if as_json:
        _print_json(out)
    else:
        print_table(
            "indexes", out, ["stage", "model", "dataset", "kind", "params", "rows", "size_bytes", "build_seconds"]
        )


@cli.command()
@json_option
@click.pass_obj
def models(state: State, as_json) -> None:
    """The embedding spaces this database holds: per model and stage its width, weights, rows and index.

    Every model stored in one database keeps its own vectors at each stage, of its own width, with
    an index of its own over each dataset's rows (a row each); stage first (pixels) is one space
    whatever the model.

    \b
    Example:
      clipvdb models
      clipvdb models --json
    """
    spaces = [sp.as_dict() for sp in state.store.status().spaces]
    if as_json:
        _print_json(spaces)
        return
    for sp in spaces:
        sp["index"] = sp["kind"] + ("" if sp["exists"] else " (not built)")
    print_table("models", spaces, ["model", "weights", "stage", "dim", "dataset", "rows", "index", "size_bytes"])


# ---------------------------------------------------------------- the stored data: datasets, delete, relabel


def _counts(d: dict) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in d.items())


def _print_edit(edit, as_json: bool) -> None:
    """One line (or JSON) for what an edit did, or with --dry-run would do."""
    if as_json:
        _print_json(edit.as_dict())
        return
    if edit.action == "rename":
        click.echo(f"{'would ' * edit.dry_run}rename dataset {edit.dataset!r} to {edit.renamed_to!r}")
        return
    done = {"delete": "deleted", "drop": "dropped", "relabel": "relabelled"}[edit.action]
    head = f"would {edit.action}" if edit.dry_run else done
    parts = [
        f"{head} {edit.images:,} images of {edit.dataset!r}" + (f" ({_counts(edit.splits)})" if edit.splits else "")
    ]
    if edit.vectors:
        parts.append(f"{sum(edit.vectors.values()):,} stored vectors ({_counts(edit.vectors)})")
    for cls, moved in edit.relabelled.items():
        parts.append(f"to {cls} from {_counts(moved)}")
    if edit.unchanged:
        parts.append(f"{edit.unchanged:,} had that class already")
    if edit.action == "drop":
        parts.append(f"{edit.runs_dropped:,} runs with it")
    elif edit.runs_no_longer_current:
        n = edit.runs_no_longer_current
        parts.append(f"{n:,} run{'s' * (n != 1)} evaluated before {'are' if n != 1 else 'is'} no longer current")
    click.echo("; ".join(parts))
    for line in edit.indexes_due:
        click.echo(line)
    if edit.vacuumed:
        click.echo(f"vacuumed {', '.join(edit.vacuumed)} in {edit.vacuum_s:.1f} s")
    elif edit.not_vacuumed:
        click.echo(edit.not_vacuumed)


@cli.group("dataset")
def dataset_group() -> None:
    """The stored datasets: list, rename, drop.

    \b
    Example:
      clipvdb dataset list
      clipvdb dataset rename cifar10 cifar10-2024
      clipvdb dataset drop scratch --dry-run
    """


@dataset_group.command("list")
@json_option
@click.pass_obj
def dataset_list(state: State, as_json: bool) -> None:
    """Every stored dataset: its folder or archive, images per split, classes, runs, last change.

    \b
    Example:
      clipvdb dataset list
      clipvdb dataset list --json
    """
    found = [d.as_dict() for d in state.store.datasets()]
    if as_json:
        _print_json(found)
        return
    for d in found:
        d["images"] = _counts(d["images"]) or "none"
    print_table("datasets", found, ["name", "images", "classes", "runs", "changed_at", "source"])


@dataset_group.command("rename")
@click.argument("name")
@click.argument("new_name")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@json_option
@click.pass_obj
def dataset_rename(state: State, name: str, new_name: str, dry_run: bool, as_json: bool) -> None:
    """Give a stored dataset a new name (its images, vectors and runs stay as they are).

    \b
    Example:
      clipvdb dataset rename cifar10 cifar10-2024
    """
    _print_edit(state.store.rename_dataset(name, new_name, dry_run=dry_run), as_json)


_vacuum_option = click.option(
    "--vacuum",
    is_flag=True,
    help="VACUUM the stage tables now (minutes for an hnsw index of 100,000s of rows; default: autovacuum).",
)


@dataset_group.command("drop")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Count what would go; drop nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_vacuum_option
@json_option
@click.pass_obj
def dataset_drop(state: State, name: str, dry_run: bool, yes: bool, vacuum: bool, as_json: bool) -> None:
    """Drop a dataset: its images, their vectors at every stage, its runs and clusterings, in one
    transaction. Other datasets, and searches running on them, are not touched. --vacuum also
    VACUUMs the stage tables it left at once (docs/database.md).

    \b
    Example:
      clipvdb dataset drop scratch --dry-run
      clipvdb dataset drop scratch --yes
    """
    store = state.store
    if not dry_run and not yes:
        preview = store.drop_dataset(name, dry_run=True)
        if not sys.stdin.isatty():
            raise UsageError(f"dropping {name!r} deletes {preview.images:,} images; confirm with --yes")
        click.confirm(f"drop {name!r}: {preview.images:,} images and {preview.runs_dropped:,} runs?", abort=True)
    _print_edit(store.drop_dataset(name, dry_run=dry_run, vacuum=vacuum), as_json)


def _edit_options(f):
    for option in reversed(
        [
            dataset_option(),
            click.option("--split", help="Only images of this split (train, test, ...)."),
            click.option("--id", "ids", type=int, multiple=True, help="An image id (repeatable)."),
            click.option("--dry-run", is_flag=True, help="Count what would change; change nothing."),
            json_option,
        ]
    ):
        f = option(f)
    return f


@cli.command()
@click.argument("files", nargs=-1)
@_edit_options
@_vacuum_option
@click.pass_obj
def delete(
    state: State, files: tuple[str, ...], dataset, split, ids, dry_run: bool, vacuum: bool, as_json: bool
) -> None:
    """Delete stored images with their vectors at every stage, in one transaction.

    FILES are paths or globs as the images are on disk: absolute, relative to here, or relative to
    the dataset's folder ('*' stays in a folder, '**' crosses folders; quote globs whose files are
    gone). Or choose by --id, or a whole --split. Runs evaluated before are no longer current
    ('clipvdb report', /runs); the deleted images leave them too. Autovacuum later removes their
    index entries; --vacuum does it at once (pgvector 0.8.4 on, which vacuums hnsw safely).

    \b
    Example:
      clipvdb delete --dataset cifar10 --split train './data/train/cat/*' --dry-run
      clipvdb delete --dataset cifar10 --id 1234 --id 1235
      clipvdb delete --dataset scratch --split test
    """
    edit = state.store.delete(dataset, split=split, paths=files, ids=ids, dry_run=dry_run, vacuum=vacuum)
    _print_edit(edit, as_json)


@cli.command()
@click.argument("args", nargs=-1, metavar="[FILES]... CLASS")
@_edit_options
@click.option("--csv", "table", type=click.Path(dir_okay=False), help="A CSV of source,class rows instead.")
@click.pass_obj
def relabel(state: State, args: tuple[str, ...], dataset, split, ids, dry_run: bool, as_json: bool, table) -> None:
    """Give stored images another of the dataset's classes, in one transaction.

    FILES are paths or globs as for 'clipvdb delete' (or --id), and CLASS the class they get; or a
    --csv of source,class rows, each file its class. Searches answer with the new labels at once;
    runs evaluated before are no longer current.

    \b
    Example:
      clipvdb relabel --dataset cifar10 --split train './data/train/dog/0042.png' cat
      clipvdb relabel --dataset cifar10 --split train './data/train/dog/*' frog --dry-run
      clipvdb relabel --dataset cifar10 --csv fixes.csv
    """
    if table is not None:
        if args:
            raise UsageError("give either --csv or FILES and a CLASS, not both")
        edit = state.store.relabel(dataset, split=split, table=table, dry_run=dry_run)
    else:
        if not args:
            raise UsageError("give the images (FILES or --id) and then the CLASS they get, or --csv")
        edit = state.store.relabel(dataset, args[-1], split=split, paths=args[:-1], ids=ids, dry_run=dry_run)
    _print_edit(edit, as_json)


def duplicates_options(f):
    """--within, --across, --threshold, --dataset: one `options` (options.DuplicatesOptions)."""
    return _gathered(
        "options",
        DuplicatesOptions,
        [
            click.option("--within", type=click.Choice(["train", "test"]), help="Pairs of images within this split."),
            click.option("--across", is_flag=True, help="Test images with a training near-duplicate (leaks)."),
            click.option(
                "--ratio",
                type=float,
                default=config.DUPLICATE_RATIO,
                show_default=True,
                help="A pair: the nearest at most this share of the distance to the next farther image.",
            ),
            click.option("--threshold", type=float, help="A pair: at most this distance apart (in place of --ratio)."),
            dataset_option(),
        ],
    )(f)


@cli.command()
@stage_option(one=True)
@duplicates_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="PNG: the nearest pairs side by side.")
@click.option("--show", type=click.IntRange(0), default=20, show_default=True, help="Pairs printed (and drawn x3).")
@model_options
@json_option
@click.pass_obj
def duplicates(state: State, stage, options: DuplicatesOptions, out, show, as_json) -> None:
    """Find near-duplicate stored images at a stage, store the pairs (report_duplicates) and show them.

    Each image of the split scanned is searched for its nearest other stored images; a pair is kept
    when the nearest is at most --ratio of the distance to the next farther image (a copy stands
    out; a plain background has many neighbours as near) and no farther than the scan's median, or
    at most --threshold apart. --across scans the test split against train: its count is
    test_images_with_train_duplicate, the leaks that 'evaluate --exclude-leaks' sets aside.

    \b
    Example:
      clipvdb duplicates --stage first --across --out leaks.png
      clipvdb duplicates --stage first --within train --ratio 0.7 --json
    """
    store = state.store
    found = store.duplicates(stage, options)
    drawn = store.duplicates_gallery(found, out, limit=max(show * 3, 1)) if out and found.pairs else None
    if as_json:
        _print_json({**found.as_dict(), "gallery": str(drawn) if drawn else None})
        return
    images = "test images with a training near-duplicate" if options.across else f"{found.split} images in a pair"
    click.echo(
        f"{found.dataset} stage {found.stage} ({found.model}): {len(found.pairs):,} pairs, each "
        f"{found.threshold_rule}; {found.images_with_duplicate:,} of {found.scanned:,} "
        f"{images}; {found.different_label:,} pairs of different classes; {found.seconds:.1f} s"
    )
    if show and found.pairs:
        print_table(
            "nearest pairs",
            [p.as_dict() for p in found.pairs[:show]],
            ["distance", "source", "class_name", "other_source", "other_class", "same_label"],
        )
    if drawn:
        click.echo(f"wrote {drawn}")


# ---------------------------------------------------------------- classify / evaluate


@cli.command()
@click.argument("images", nargs=-1, required=True)
@stage_option(None, note=f"{STAGE_CHOICES} (default: every stage with rows).")
@classify_options
@search_options()
@model_options
@json_option
@click.pass_obj
def classify(state: State, images, stage, options, settings: SearchSettings, as_json) -> None:
    """Classify IMAGES by nearest stored neighbor at each stage (origin: zero-shot).

    \b
    Example:
      clipvdb classify cat.png
      clipvdb classify cat.png ship.png --stage first,second --k 5 --json
    """
    preds = state.store.classify(list(images), _stages(stage) if stage else None, settings, options)
    if as_json:
        _print_json([p.as_dict() for p in preds])
        return
    rows = [
        {
            "image": p.image,
            "stage": p.stage,
            "class": p.predicted_class,
            "distance": p.distance,
            "neighbor": (p.neighbors[0]["source"] if p.neighbors else "zero-shot"),
            "encode_ms": p.encode_ms,
            "query_ms": p.query_ms,
        }
        for p in preds
    ]
    print_table("predictions", rows)


@cli.command()
@stage_option()
@click.option("--data", "data", required=True, help="Same forms as ingest --data.")
@evaluate_options
@search_options(several=True)
@click.option(
    "--exclude-leaks",
    is_flag=True,
    help="Also the accuracy without the test images that 'clipvdb duplicates --across' found in train.",
)
@model_options
@json_option
@click.pass_obj
def evaluate(
    state: State, stage, data, options: EvaluateOptions, settings: SearchSettings, exclude_leaks: bool, as_json
) -> None:
    """Classify a labelled split, store every prediction, print accuracy and time per stage.

    With a list of models, ONE run covering them all: each model answers from its own stored
    vectors, the models taking turns over the same images, each timed on its own; the report views
    give a row per model and stage, and --json prints a list, one entry per model.

    \b
    Example:
      clipvdb evaluate --stage first --data cifar-10-python.tar.gz --limit 1000 --exact
      clipvdb evaluate --stage all --data ./cifar10 --k 5 --display-freq 5
      clipvdb evaluate --stage first --data ./cifar10 --k 1,5,20 --metric cosine
      clipvdb evaluate --stage second,third --data ./cifar10 --model RN50,efficientnet-lite0
      clipvdb report --view report_accuracy_by_k
    """
    from .sources import open_source  # numpy: kept off the start-up of --help

    stages = _stages(stage)
    source = open_source(data)
    states = state.per_model()
    progress, update = _progress(f"evaluate {','.join(s.name for s in stages)}")
    with progress:
        kw = {"settings": settings, "options": options, "progress": update, "report": progress.console.print}
        if len(states) == 1:
            results = [state.store.evaluate(source, stages, **kw)]
        else:
            results = state.store.compare(source, [each.model for each in states], stages, **kw)
    clean = [state.store.without_leaks(r.run_id, no) if exclude_leaks else None for no, r in enumerate(results)]
    if exclude_leaks and not any(c["leaked"] for c in clean if c):
        click.echo("no leaks recorded for this dataset: run 'clipvdb duplicates --stage S --across' first", err=True)
    if as_json:
        with_leaks = [_WithLeaks(r, c) for r, c in zip(results, clean, strict=True)]
        _print_per_model_json(states, with_leaks if exclude_leaks else results)
        return
    for result, without in zip(results, clean, strict=True):
        rows = [
            {
                "stage": n,
                "n": t.n,
                "accuracy_%": t.accuracy,
                "encoder_s": t.encode_ms / 1000,
                "query_s": t.query_ms / 1000,
            }
            for n, t in result.stages.items()
        ]
        if without is not None:
            for row in rows:
                w = without["stages"].get(row["stage"], {})
                row["n_without_leaks"], row["accuracy_without_leaks_%"] = w.get("n"), w.get("accuracy_pct")
        print_table(f"run {result.run_id}: {result.model} on {result.dataset}/{result.split}", rows)
        click.echo(result.summary())
    for _key, reason in results[0].failed:  # every model's turn skips the same images
        click.echo(f"skipped: {reason}", err=True)


# ---------------------------------------------------------------- retrieval


@cli.command()
@click.argument("text", required=False)
@click.option("--image", "image", help="Compose: add this image's embedding to the text's.")
@click.option("--k", "k", type=click.IntRange(1), default=10, show_default=True)
@stage_option("origin", note="Text search works at origin.")
@dataset_option(what="Dataset to search")
@_exact_option()
@model_options
@json_option
@click.pass_obj
def retrieve(state: State, text, image, k, stage, dataset, exact, as_json) -> None:
    """Find stored images by TEXT (cosine distance over stored origin embeddings).

    \b
    Example:
      clipvdb retrieve "a red sports car" --k 10
      clipvdb retrieve "but red" --image car.png
    """
    hits = state.store.retrieve(text, image=image, k=k, stage=stage, dataset=dataset, exact=exact)
    if as_json:
        _print_json([h.as_dict() for h in hits])
        return
    print_table("retrieve", [h.as_dict() for h in hits], ["image_id", "class_name", "source", "distance"])


def _renamed(command: click.Command, old: str) -> click.Command:
    """`command` under its old name too, hidden, saying the new one on stderr; kept for a release."""
    callback = command.callback
    assert callback is not None

    @functools.wraps(callback)
    def warned(*args, **kwargs):
        click.echo(
            f"clipvdb {old} is now 'clipvdb {command.name}' (same arguments); '{old}' goes in the next release",
            err=True,
        )
        return callback(*args, **kwargs)

    alias = copy.copy(command)
    alias.hidden, alias.callback = True, warned
    return alias


cli.add_command(_renamed(retrieve, "search"), "search")


@cli.command()
@click.argument("image")
@stage_option("all")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("neighbors.png"), show_default=True)
@dataset_option(what="Dataset to search")
@search_options(k=10)
@model_options
@json_option
@click.pass_obj
def neighbors(state: State, image, stage, out, dataset, settings, as_json) -> None:
    """Draw IMAGE beside its k nearest stored images per stage, as one PNG.

    \b
    Example:
      clipvdb neighbors cat.png --stage first,second --k 8 --out grid.png
    """
    stages = [s for s in _stages(stage) if s.name != "origin"] if stage == "all" else _stages(stage)
    if settings.k > 50:
        raise UsageError("neighbors draws at most 50 per row: give --k 50 or fewer")
    grid = state.store.neighbors(image, stages, out, settings, dataset=dataset)
    if as_json:
        _print_json({"path": str(grid.path), "stages": grid.stages, "columns": grid.columns, "rows": grid.rows})
        return
    click.echo(str(grid.path))


@cli.group()
def experiment() -> None:
    """Experiments inside PostgreSQL.

    \b
    Example:
      clipvdb experiment search --stage first --sizes 1000,5000,20000
    """


def _ints(value: str) -> list[int]:
    try:
        out = [int(x) for x in value.split(",") if x.strip()]
    except ValueError as exc:
        raise UsageError(f"expected comma-separated integers, got {value!r}") from exc
    if not out or min(out) < 1:
        raise UsageError(f"expected positive integers, got {value!r}")
    return out


def experiment_options(f):
    """--sizes, --queries, --probes, --ef-search, --metric: one `options` (options.ExperimentOptions)."""

    def build(sizes, queries, probes, ef_search, metric):
        return ExperimentOptions(tuple(_ints(sizes)), queries, tuple(_ints(probes)), tuple(_ints(ef_search)), metric)

    return _gathered(
        "options",
        build,
        [
            click.option("--sizes", default="1000,5000,20000,50000", show_default=True, help="Stored-set sizes."),
            click.option("--queries", type=click.IntRange(1), default=100, show_default=True),
            click.option("--probes", default="1,5,10", show_default=True, help="ivfflat probes to try."),
            click.option("--ef-search", default="40,100", show_default=True, help="hnsw ef_search values to try."),
            _metric_option(),
        ],
    )(f)


@experiment.command("search")
@stage_option(one=True)
@experiment_options
@click.option("--out", "out", type=click.Path(path_type=Path), help="PNG: recall@1 versus queries per second.")
@model_options
@json_option
@click.pass_obj
def experiment_search(state: State, stage, options, out, as_json) -> None:
    """Recall and speed of exact, ivfflat and hnsw search as the stored set grows.

    Results go to the experiment_results table (view report_experiments).

    \b
    Example:
      clipvdb experiment search --stage first --sizes 1000,5000 --out recall.png
    """
    result = state.store.experiment(stage, options)
    if out:
        state.store.plot_experiment(result, out)
    if as_json:
        _print_json({"experiment_id": result.experiment_id, "rows": result.rows, "plot": str(out) if out else None})
        return
    print_table(f"experiment {result.experiment_id}", result.rows)
    if out:
        click.echo(str(out))


@cli.command()
@stage_option(one=True)
@learn_options
@model_options
@json_option
@click.pass_obj
def learn(state: State, stage, options: LearnOptions, as_json) -> None:
    """Fit a learned metric on the stage's training split; --learned searches then use it.

    \b
    Example:
      clipvdb learn --stage first --dims 128
      clipvdb evaluate --stage first --data ./cifar10 --learned
      clipvdb learn --stage origin --model efficientnet-lite0 --method mlp
    """
    lmap = state.store.learn(stage, options)
    out = {
        "stage": lmap.stage,
        "method": lmap.method,
        "dims": lmap.dims,
        "fitted_rows": lmap.fitted_rows,
        "fit_seconds": round(lmap.fit_seconds, 2),
        "params": lmap.params,
    }
    if as_json:
        _print_json(out)
        return
    click.echo(
        f"learned map for stage {lmap.stage}: {lmap.method}, {lmap.dims} dimensions, fitted on "
        f"{lmap.fitted_rows:,} training rows in {lmap.fit_seconds:.1f} s"
    )


@cli.command()
@click.option("--data", required=True, help="Labelled images: the same forms as ingest --data.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint file to write (default: the home's models/NAME.pt, found by --model NAME).",
)
@train_options
@click.option("--device", envvar=config.ENV_DEVICE, help="cpu (default) or cuda.")
@json_option
@click.pass_obj
def train(state: State, data, out, options: TrainOptions, device, as_json) -> None:
    """Train a compact residual CNN on a labelled split, or fine-tune an ImageNet network (--base);
    the checkpoint is then a --model.

    The compact CNN's stages: second (half the network), third (the pooled features), origin (its
    own classifier). A fine-tuned network keeps its base's stages, classified by neighbors; only
    its last two block stages and its head are trained. First is the pixels, as for every model.

    \b
    Example:
      clipvdb train --data ./cifar10 --out cifar-cnn.pt
      clipvdb ingest --stage all --data ./cifar10 --model cifar-cnn.pt
      clipvdb evaluate --stage all --data ./cifar10 --model cifar-cnn.pt --k 1,5,20
      clipvdb train --data ./cifar10 --base efficientnet-lite0@160 --epochs 1 --out lite0-cifar.pt
    """
    if device:
        state.device = device
    progress, update = _progress("train", show="loss {loss:.3f}")
    with progress:
        result = state.store.train(data, out, options, progress=update, say=lambda line: progress.console.print(line))
    if as_json:
        _print_json(result.as_dict())
        return
    tuned = f" (fine-tuned {result.base})" if result.base else ""
    click.echo(
        f"{result.path}: {result.name}{tuned}, {result.epochs} epochs on {result.images:,} images "
        f"in {result.seconds:.0f} s "
        f"({result.images_per_s:.0f} images/s), final loss {result.final_loss:.3f}, "
        f"training accuracy {result.train_accuracy:.1%}; sha256 {result.sha256[:16]}"
    )


@cli.group()
def cluster() -> None:
    """Cluster a stage's stored vectors; scores against the labels are SQL views.

    \b
    Example:
      clipvdb cluster fit --stage first --k 10
      clipvdb cluster list
      clipvdb cluster show 1 --out clusters.png
      psql "$(clipvdb db url)" -c 'SELECT * FROM report_cluster_purity'
    """


@cluster.command("fit")
@stage_option(one=True)
@cluster_options
@model_options
@json_option
@click.pass_obj
def cluster_fit(state: State, stage, options: ClusterOptions, as_json) -> None:
    """Cluster the stored vectors of one stage, split and dataset; store members and centres.

    \b
    Example:
      clipvdb cluster fit --stage first --k 10
      clipvdb cluster fit --stage second --method dbscan --eps 4 --min-samples 10 --sample 5000
    """
    c = state.store.cluster(stage, options)
    if as_json:
        _print_json(c.__dict__)
        return
    click.echo(
        f"clustering {c.id}: {c.method} at stage {c.stage}, {c.n:,} rows, {c.n_clusters} clusters"
        f"{f', {c.n_noise} noise' if c.n_noise else ''} in {c.fit_seconds:.1f} s; purity {c.purity:.3f}, "
        f"adjusted Rand {c.adjusted_rand_index:.3f}, NMI {c.normalized_mutual_info:.3f}"
    )


@cluster.command("list")
@json_option
@click.pass_obj
def cluster_list(state: State, as_json: bool) -> None:
    """The stored clusterings with their scores against the labels.

    \b
    Example:
      clipvdb cluster list --json
    """
    rows = [c.__dict__ for c in state.store.clusterings()]
    if as_json:
        _print_json(rows)
        return
    print_table(
        "clusterings",
        rows,
        [
            "id",
            "stage",
            "method",
            "params",
            "n",
            "n_clusters",
            "n_noise",
            "purity",
            "adjusted_rand_index",
            "normalized_mutual_info",
            "fit_seconds",
        ],
    )


@cluster.command("show")
@click.argument("clustering_id", type=int)
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("clusters.png"), show_default=True)
@click.option("--per-cluster", type=click.IntRange(1, 32), default=8, show_default=True)
@click.pass_obj
def cluster_show(state: State, clustering_id: int, out: Path, per_cluster: int) -> None:
    """Draw a clustering: a row per cluster, the images nearest its centre, majority class, purity.

    \b
    Example:
      clipvdb cluster show 1 --out clusters.png
    """
    click.echo(str(state.store.cluster_grid(clustering_id, out, per_cluster=per_cluster)))


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--k", "k", type=click.IntRange(1, 50), default=5, show_default=True, help="Neighbors shown.")
@learned_option
@model_options
@click.pass_obj
def serve(state: State, host: str, port: int, k: int, learned: bool) -> None:
    """A small web page: upload or pick an image, see per-stage predictions and neighbors, search by text.

    \b
    Example:
      clipvdb serve --port 8000    # then open http://127.0.0.1:8000
    """
    from .web import serve as run_serve  # flask: only when serving

    click.echo(f"clipvdb: serving on http://{host}:{port} (Ctrl-C to stop)", err=True)
    run_serve(state.store, host=host, port=port, k=k, learned=learned)


# ---------------------------------------------------------------- report / plot


@cli.command()
@_run_option()
@click.option("--view", "views", multiple=True, help="Only these views (repeatable).")
@json_option
@click.pass_obj
def report(state: State, run: int | None, views: tuple[str, ...], as_json: bool) -> None:
    """Print the report views (accuracy, timing, confusion, per class, distances) as tables.

    \b
    Example:
      clipvdb report
      clipvdb report --run 3 --view report_accuracy --json
    """
    data = state.store.reports(run, views or None)
    if as_json:
        _print_json(data)
        return
    if data["run_id"] is None:
        raise UsageError("no complete evaluation run yet; run 'clipvdb evaluate' first")
    _print_report(data, tuple(data.views))


# Columns left out of the human tables (they are in --json and in psql).
HIDDEN_COLUMNS = {"report_runs": ("params", "index", "storage", "started_at", "finished_at")}


def _print_report(data: Report, views: tuple[str, ...]) -> None:
    for view in views:
        rows = data[view]
        if view == "report_confusion":
            _print_confusion(rows)
            continue
        hidden = HIDDEN_COLUMNS.get(view, ()) + ("run_id",) * (view != "report_runs")
        print_table(view, [{k: v for k, v in r.items() if k not in hidden} for r in rows])


def _print_confusion(rows: list[dict]) -> None:
    for model, stage in dict.fromkeys((r["model"], r["stage"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["stage"]) == (model, stage)]
        cells = {(r["true_class"], r["predicted_class"]): r["n"] for r in mine}
        classes = sorted({c for pair in cells for c in pair if c}, key=str)
        title = f"report_confusion: {model}, stage {stage} (rows true, columns predicted)"
        grid = [["true \\ pred", *classes]] + [[t, *[str(cells.get((t, p), "")) for p in classes]] for t in classes]
        print_plain(title, grid, numeric=[False] + [True] * len(classes))


@cli.command()
@click.option(
    "--run",
    "runs",
    type=int,
    multiple=True,
    help="Run id, repeatable: several runs add one trade-off chart of them all (default: the latest complete run).",
)
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Folder for the PNG files.")
@click.option("--squared", is_flag=True, help="Histograms on the study's axis: squared L2 distance.")
@click.pass_obj
def plot(state: State, runs: tuple[int, ...], out: Path, squared: bool) -> None:
    """Write the study's distance histograms per stage and an accuracy/time chart as PNG; for a run of
    several models (evaluate --model A,B) or several runs, also one chart of accuracy against ms per
    image with every model x stage.

    \b
    Example:
      clipvdb plot --out plots/
      clipvdb plot --out plots/ --squared --run 3
      clipvdb plot --out plots/ --run 3 --run 4
    """
    for path in state.store.plot(out, list(runs) or None, squared=squared):
        click.echo(str(path))


# ---------------------------------------------------------------- demo


@cli.command()
@click.option("--data", "data", help="A local source (default: CIFAR-10 if it can be had, else synthetic).")
@click.option("--train", "n_train", type=click.IntRange(10), default=500, show_default=True)
@click.option("--test", "n_test", type=click.IntRange(10), default=100, show_default=True)
@stage_option("all")
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("demo-out"), show_default=True)
@model_options
@click.pass_obj
def demo(state: State, data, n_train, n_test, stage, out) -> None:
    """End to end on the embedded database: ingest, evaluate, report, plot.

    \b
    Example:
      clipvdb demo
      clipvdb demo --data ./cifar10 --train 2000 --test 200
    """
    from .demo import run_demo  # the Store and the encoder: only when the demo runs

    stages = _stages(stage)
    result = run_demo(
        state.store,
        data=data,
        n_train=n_train,
        n_test=n_test,
        stages=stages,
        out=out,
        say=click.echo,
        progress=_progress,
    )
    assert result.report is not None and result.evaluation is not None
    _print_report(result.report, ("report_runs", "report_accuracy", "report_timing"))
    for _, _, report in result.beside:
        _print_report(report, ("report_accuracy", "report_timing"))
    click.echo("more: clipvdb report (confusion, per-class accuracy, distance histogram)")
    for n in result.notices:
        click.echo(f"NOTE: {n}")
    click.echo("plots: " + ", ".join(str(p) for p in result.plots))
    ids = ", ".join(str(r) for r in [result.evaluation.run_id, *(run.run_id for _, run, _ in result.beside)])
    click.echo(f'explore: psql "$(clipvdb db url)" -c "SELECT * FROM report_accuracy WHERE run_id IN ({ids})"')


def main() -> None:
    # psycopg's pool logs a warning when it drops or fails to reset a broken connection; the
    # command's one-line error already says what happened, so that log stays off the user's stderr
    logging.getLogger("psycopg").addHandler(logging.NullHandler())
    cli(prog_name="clipvdb")


if __name__ == "__main__":
    main()
