"""Shared fixtures: a real PostgreSQL with pgvector (the embedded server, or CLIPVDB_TEST_DATABASE_URL),
pytest-postgresql noproc fixtures giving each test a fresh database cloned from a migrated template,
generated images, and a random-initialised RN50 checkpoint so that nothing is downloaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner
from PIL import Image
from pytest_postgresql import factories

from clipvdb import db, embedded, synthetic
from clipvdb.errors import DatabaseError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network from tests

_TEST_URL = os.environ.get("CLIPVDB_TEST_DATABASE_URL")
_HOME = None
if _TEST_URL:
    _info = psycopg.conninfo.conninfo_to_dict(_TEST_URL)
else:
    # The embedded server, started once per test session (under a second).
    _HOME = Path(tempfile.mkdtemp(prefix="clipvdb-test-"))
    _info = psycopg.conninfo.conninfo_to_dict(embedded.start(_HOME))
PG = {
    "host": _info.get("host", "localhost"),
    "port": int(_info.get("port") or 5432),
    "user": _info.get("user") or "postgres",
    "password": _info.get("password"),
}


def url_for(dbname: str) -> str:
    auth = quote(PG["user"]) + (":" + quote(PG["password"]) if PG["password"] else "")
    host = PG["host"]
    if host.startswith("/"):
        return f"postgresql://{auth}@/{dbname}?host={quote(host, safe='/')}&port={PG['port']}"
    return f"postgresql://{auth}@{host}:{PG['port']}/{dbname}"


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Every tmp_path under a directory of this session's own. pytest's shared root
    (/tmp/pytest-of-<user>) goes back to mode 0700 whenever another pytest starts, which shuts the
    embedded servers' own user out of the homes a running session made under it (a server's pg_ctl
    stop then failed with "Permission denied")."""
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="clipvdb-pytest-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_sessionfinish(session, exitstatus):
    if _HOME is not None:
        embedded.stop(_HOME)
        shutil.rmtree(_HOME, ignore_errors=True)
    own = session.config.stash.get(_OWN_BASETEMP, None)
    if own and exitstatus == 0:  # kept after a failure, for a look at what the tests left
        shutil.rmtree(own, ignore_errors=True)


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    text = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return text.removeprefix("Skipped: ")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The skipped tests counted by reason, after every run; with CLIPVDB_SKIPS_JSON set, each skip
    (test and reason) written there as JSON for .ci/skips, which fails CI when a group skips although
    what it needs is present."""
    skips = [{"test": r.nodeid, "reason": _skip_reason(r)} for r in terminalreporter.stats.get("skipped", [])]
    terminalreporter.write_sep("-", f"skipped tests by reason: {len(skips)}")
    for reason, n in Counter(s["reason"] for s in skips).most_common():
        terminalreporter.write_line(f"{n:5d}  {reason}")
    if path := os.environ.get("CLIPVDB_SKIPS_JSON"):
        Path(path).write_text(json.dumps({"exitstatus": int(exitstatus), "skipped": skips}, indent=1) + "\n")


def _migrate(host, port, user, dbname, password, **_):
    db.upgrade(url_for(dbname))


migrated_proc = factories.postgresql_noproc(
    host=PG["host"],
    port=PG["port"],
    user=PG["user"],
    password=PG["password"],
    dbname="clipvdb_test",
    load=[_migrate],
)
empty_proc = factories.postgresql_noproc(
    host=PG["host"],
    port=PG["port"],
    user=PG["user"],
    password=PG["password"],
    dbname="clipvdb_empty",
)
pg = factories.postgresql("migrated_proc")
pg_empty = factories.postgresql("empty_proc")


@pytest.fixture
def db_url(pg) -> str:
    """URL of a fresh database at the head revision."""
    return url_for(pg.info.dbname)


@pytest.fixture
def empty_db_url(pg_empty) -> str:
    """URL of a fresh database with nothing in it (not even pgvector)."""
    return url_for(pg_empty.info.dbname)


@pytest.fixture
def conn(db_url):
    with db.connection(db_url) as c:
        yield c


@pytest.fixture(scope="session")
def syn_data(tmp_path_factory) -> Path:
    """A generated image-folder set: 6 train and 2 test images per class, 10 classes."""
    return synthetic.generate(tmp_path_factory.mktemp("syn") / "syn", {"train": 6, "test": 2})


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CIFAR_ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"


def require_real_data() -> None:
    """Skip the calling test, with the reason every real-data test gives, where the real CIFAR-10 copy is absent."""
    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"real data not present: {CIFAR_ARCHIVE} (see ../shared/data/README.md)")


@pytest.fixture(scope="session")
def cifar_jpeg(tmp_path_factory) -> Path:
    """The real CIFAR-10 JPEG folders from ../shared/data, extracted once (skips when absent)."""
    require_real_data()
    root = tmp_path_factory.mktemp("real")
    with tarfile.open(CIFAR_ARCHIVE) as tar:
        tar.extractall(root, filter="data")
    return root / "cifar10"


@pytest.fixture(scope="session")
def rn50_checkpoint(tmp_path_factory) -> Path:
    """A random-initialised RN50 state dict saved to a file, loaded through --pretrained PATH."""
    import open_clip
    import torch

    torch.manual_seed(1234)
    model = open_clip.create_model("RN50", pretrained=None, force_quick_gelu=True)
    # open_clip zero-initialises each bottleneck's last batch norm, which makes every residual block
    # an identity at random init; random scales make the stage-equivalence tests see real layers.
    with torch.no_grad():
        for name, module in model.visual.named_modules():
            if name.endswith("bn3"):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "rn50-random.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def rn50(rn50_checkpoint):
    from clipvdb.clip_model import load_model

    return load_model("RN50", str(rn50_checkpoint), "cpu")


@pytest.fixture
def store(db_url):
    """A Store on the fresh test database with the tiny (no-torch) encoder."""
    from clipvdb import Store, TinyEncoder

    with Store(db_url, encoder=TinyEncoder()) as s:
        yield s


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def cli(runner, db_url, monkeypatch):
    """Invoke the CLI against the test database; exceptions are not swallowed."""
    from clipvdb.cli import cli as group

    monkeypatch.setenv("CLIPVDB_DATABASE_URL", db_url)

    def invoke(*args: str, expect: int | None = 0):
        result = runner.invoke(group, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, f"exit {result.exit_code}: {result.output}"
        return result

    return invoke


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


CITUS_SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "citus"


def _citus_cluster(tmp_path_factory, name: str):
    """A home holding a local Citus cluster (coordinator + 2 workers) with the schema distributed,
    stopped after use. Builds Citus from ../shared/citus when it is there and not installed yet;
    skips only where the source is absent."""

    from clipvdb import nodes

    if not nodes.citus_installed():
        if not (CITUS_SOURCE / "build.sh").exists():
            pytest.skip(f"Citus is not installed and its source is absent ({CITUS_SOURCE}); run 'make citus'")
        from clipvdb import embedded

        build = Path(__file__).resolve().parents[1] / "scripts" / "build-citus"
        subprocess.run([str(build), str(CITUS_SOURCE), str(embedded.pg_config())], check=True, capture_output=True)
    from clipvdb import Store

    home = tmp_path_factory.mktemp(name)
    store = Store(home=home)
    try:
        store.start_nodes(2)
    finally:
        store.close()
    yield home
    try:
        nodes.stop(home)
    except DatabaseError as exc:
        # pg_ctl could not stop a node, e.g. the worker test_worker_killed_during_evaluate killed
        # left a postmaster.pid behind; say so instead of failing every test that used the cluster.
        warnings.warn(f"the Citus cluster in {home} did not stop cleanly: {exc}", stacklevel=1)


@pytest.fixture(scope="session")
def citus_home(tmp_path_factory):
    """The session's shared cluster (test_citus.py and the real-data tests)."""
    yield from _citus_cluster(tmp_path_factory, "citus")


@pytest.fixture(scope="module")
def own_citus_home(tmp_path_factory):
    """A cluster of the module's own, for tests whose datasets must not reach the shared one (where
    a test that names no dataset expects only its own)."""
    yield from _citus_cluster(tmp_path_factory, "owncitus")


# ------------------------------------------------------------------ hand-made vectors in a stage


class FakeEncoder:
    """Identity of a CLIP embedding space for vectors put in by hand (no encoder runs)."""

    name, weights = "fake", "fake"


def load_vectors(conn, stage, X: np.ndarray, labels=None) -> list[int]:
    """Store X as the training split of dataset 1 (classes a, b) at `stage`; return the image ids in row order."""
    from clipvdb import catalog
    from clipvdb.storage import StageRows

    conn.execute("INSERT INTO datasets (id, name, source) VALUES (1, 'd', '/x') ON CONFLICT DO NOTHING")
    conn.execute("INSERT INTO classes VALUES (1, 0, 'a'), (1, 1, 'b') ON CONFLICT DO NOTHING")
    space = catalog.get_or_create_space(conn, stage, None if not stage.uses_clip else FakeEncoder())
    labels = labels if labels is not None else [i % 2 for i in range(len(X))]
    rows = [(f"k{i}", int(labels[i]), bytes(32)) for i in range(len(X))]
    ids = catalog.upsert_images(conn, 1, "train", rows)
    image_ids = [ids[r[0]] for r in rows]
    StageRows(stage, space.id, 1, "train").copy(conn, image_ids, X)
    conn.commit()
    return image_ids


def search_plan(store, stage: str, image: str, dataset: str | None = None) -> str:
    """The plan of the Store's batched search at `stage` (in `dataset`) for one image, seq and bitmap
    scans off: the tables are tiny, and the planner shows which index it can use."""
    from psycopg import sql

    searcher = store.searcher(stage, dataset=dataset)
    params = searcher.query_params(store.embed([image], stage)[stage])
    with store.connection() as conn, conn.transaction():
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        rows = conn.execute(sql.SQL("EXPLAIN ") + searcher.sql, params).fetchall()
    return "\n".join(r[0] for r in rows)


def space_at(conn, stage):
    """The one embedding space stored at `stage` (the tests' fake encoder's, or pixels)."""
    from clipvdb import catalog

    (space,) = catalog.stored_spaces(conn, [stage]) or [
        catalog.Space(row[0], stage)
        for row in conn.execute("SELECT id FROM embedding_spaces WHERE stage = %s", (stage.name,)).fetchall()
    ]
    return space


def nearest_ids(conn, stage, identity, Q, settings) -> list[int]:
    """The nearest stored image id for each query row, through the library's searcher."""
    from clipvdb.knn import KnnSearcher

    s = KnnSearcher(conn, stage, identity, 1, "train", settings)
    conn.commit()
    neigh, _ = s.search(conn, Q)
    return [n[0].image_id for n in neigh]


def exact_ids(X, Q, ids):
    """The true nearest neighbor (L2) of each query row, by numpy brute force."""
    d = ((Q[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    return [ids[j] for j in d.argmin(1)]


# ------------------------------------------------------------------ headless Chromium


def _ensure_chromium() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed here if missing (CI runs as root)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            env=env,
            capture_output=True,
            timeout=900,
        )
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("chromium and chromium-driver could not be installed (apt-get install chromium chromium-driver)")
    return browser, driver


def headless_chromium(profile: Path, window: str, *, browser_logs: bool = False):
    """A headless Chromium driven by Selenium (skips where Chromium cannot be had); the caller quits it."""
    browser, driver_path = _ensure_chromium()
    from selenium import webdriver  # only the browser tests need Selenium
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={window}",
    ):
        opts.add_argument(flag)
    if browser_logs:
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)
