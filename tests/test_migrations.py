"""Alembic migrations: round trip, advisory lock, and the frozen view copies match sql/."""

import importlib.util
import subprocess
import sys

import psycopg
import pytest

from clipvdb import db
from clipvdb.reports import VIEWS

TABLES = {"datasets", "classes", "images", "embedding_spaces", "stage_indexes", "eval_runs", "predictions",
          "embeddings_first", "embeddings_second", "embeddings_third", "embeddings_origin"}  # fmt: skip


def _relations(url: str) -> set[str]:
    with psycopg.connect(url) as c:
        rows = c.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(empty_db_url):
    assert db.current_revision(empty_db_url) is None
    assert db.upgrade(empty_db_url) == db.head_revision()
    assert TABLES | set(VIEWS) <= _relations(empty_db_url)
    assert db.downgrade(empty_db_url, "base") is None
    assert _relations(empty_db_url) <= {"alembic_version"}
    assert db.upgrade(empty_db_url) == db.head_revision()
    assert TABLES | set(VIEWS) <= _relations(empty_db_url)


def test_stage_columns_have_fixed_dimensions(db_url):
    with psycopg.connect(db_url) as c:
        rows = dict(c.execute(
            """SELECT c.relname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               WHERE c.relname LIKE 'embeddings_%' AND a.attname = 'embedding'"""
        ).fetchall())  # fmt: skip
    assert rows == {"embeddings_first": "vector(3072)", "embeddings_second": "vector(1024)",
                    "embeddings_third": "vector(2048)", "embeddings_origin": "vector(1024)"}  # fmt: skip


def test_concurrent_upgrades_on_a_fresh_database(empty_db_url):
    """Two processes upgrade at once: the advisory lock serialises them; both succeed."""
    code = "import sys; from clipvdb import db; print(db.upgrade(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, empty_db_url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o[0].strip() for o in outs] == [db.head_revision()] * 2
    with psycopg.connect(empty_db_url) as c:
        assert c.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 1


def _frozen_views() -> dict[str, str]:
    """The newest frozen copy of each view across the migration files, in revision order."""
    latest: dict[str, str] = {}
    for path in sorted(db.migrations_dir().joinpath("versions").glob("[0-9]*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        latest.update(getattr(module, "VIEWS", {}))
    return latest


@pytest.mark.parametrize("view", sorted(p.stem for p in db.sql_dir().glob("*.sql")))
def test_sql_file_equals_newest_frozen_copy(view):
    frozen = _frozen_views()
    assert view in frozen, f"no migration creates {view}"
    assert (db.sql_dir() / f"{view}.sql").read_text() == frozen[view], (
        f"sql/{view}.sql changed: add a migration with the new frozen copy"
    )


def test_schema_check_names_the_fix(empty_db_url):
    from clipvdb.errors import SchemaError

    with pytest.raises(SchemaError, match="clipvdb db upgrade"):
        db.open_db(empty_db_url)
