"""The shipped Alembic migrations: install, no drift, round trips, out-of-date schemas (DESIGN §4)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Connection, Engine

import sagadsl
from sagadsl import SagaEngine, SchemaOutOfDateError, SqlStorage
from sagadsl.storage.models import metadata
from sagadsl.storage.schema import (
    VERSION_TABLE,
    alembic_config,
    current_revision,
    downgrade,
    head_revision,
    migrations_dir,
)

ROOT = Path(__file__).resolve().parent.parent
TABLES = {"sagadsl_workflows", "sagadsl_steps", "sagadsl_status_counts", "sagadsl_locks"}
HEAD = "sagadsl_0009"


@pytest.fixture(params=["sqlite", "postgres"])
def empty_db(request: pytest.FixtureRequest) -> Iterator[tuple[Engine, str | None]]:
    """``(engine, schema)`` of an empty SQLite file or an empty PostgreSQL schema."""
    if request.param == "sqlite":
        engine = create_engine(request.getfixturevalue("sqlite_url"))
        yield engine, None
    else:
        url, schema = request.getfixturevalue("pg_schema")
        engine = create_engine(url)
        yield engine, schema
    engine.dispose()


def _tables(engine: Engine, schema: str | None) -> set[str]:
    return set(inspect(engine).get_table_names(schema=schema))


def _revision(engine: Engine, schema: str | None) -> str | None:
    with engine.connect() as conn:
        return current_revision(conn, schema)


class TestUpgradeHead:
    def test_installs_the_tables_and_records_head_in_sagadsls_own_version_table(
            self, empty_db: tuple[Engine, str | None]) -> None:
        engine, schema = empty_db
        sagadsl.migrate(engine, schema=schema)
        assert _tables(engine, schema) == TABLES | {VERSION_TABLE}
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT version_num FROM {schema + '.' if schema else ''}"
                                     f"{VERSION_TABLE}")).scalars().all() == [HEAD]

    def test_is_safe_to_run_again(self, empty_db: tuple[Engine, str | None]) -> None:
        engine, schema = empty_db
        sagadsl.migrate(engine, schema=schema)
        sagadsl.migrate(engine, schema=schema)
        assert _revision(engine, schema) == HEAD

    def test_postgres_schema_is_created_when_missing(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        missing = f"{schema}_new"
        engine = create_engine(url)
        try:
            sagadsl.migrate(url, schema=missing)
            assert _tables(engine, missing) == TABLES | {VERSION_TABLE}
        finally:
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{missing}" CASCADE'))
            engine.dispose()

    def test_postgres_uses_jsonb_and_timestamptz(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        sagadsl.migrate(url, schema=schema)
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                kinds: dict[str, str] = dict(conn.execute(text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = :s AND table_name = 'sagadsl_workflows'"), {"s": schema}).all())
        finally:
            engine.dispose()
        assert kinds["created_at"] == "timestamp with time zone"
        assert kinds["input"] == "jsonb"


def _drift(conn: Connection) -> list[object]:
    ctx = MigrationContext.configure(conn, opts={"compare_type": True, "version_table": VERSION_TABLE})
    return list(compare_metadata(ctx, metadata))


class TestNoDrift:
    def test_the_migrated_schema_matches_the_orm_models(self, empty_db: tuple[Engine, str | None]) -> None:
        engine, schema = empty_db
        sagadsl.migrate(engine, schema=schema)
        with engine.connect() as conn:
            if schema:
                # Autogenerate compares the default schema; make it the test's schema.
                conn.execute(text(f'SET search_path TO "{schema}"'))
            assert _drift(conn) == []

    def test_there_is_exactly_one_head(self) -> None:
        script = ScriptDirectory.from_config(alembic_config())
        assert script.get_heads() == [HEAD]
        assert head_revision() == HEAD


class TestDowngrade:
    def test_downgrade_to_base_then_upgrade_head_round_trips(
            self, empty_db: tuple[Engine, str | None]) -> None:
        engine, schema = empty_db
        sagadsl.migrate(engine, schema=schema)
        downgrade(engine, "base", schema=schema)
        assert _tables(engine, schema) - {VERSION_TABLE} == set()
        assert _revision(engine, schema) is None
        sagadsl.migrate(engine, schema=schema)
        assert _tables(engine, schema) == TABLES | {VERSION_TABLE}
        assert _revision(engine, schema) == HEAD
        with engine.connect() as conn:
            if schema:
                conn.execute(text(f'SET search_path TO "{schema}"'))
            assert _drift(conn) == []


def _alembic(*args: str, url: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alembic", *args], check=False, cwd=cwd,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SAGADSL_DATABASE_URL": url, **env})


class TestAlembicCommandLine:
    def test_upgrade_head_from_the_checkout_on_sqlite(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'cli.db'}"
        done = _alembic("upgrade", "head", url=url)
        assert done.returncode == 0, done.stderr
        assert "Running upgrade  -> sagadsl_0001" in done.stderr
        assert "Running upgrade sagadsl_0001 -> sagadsl_0002" in done.stderr
        assert "Running upgrade sagadsl_0002 -> sagadsl_0003" in done.stderr
        assert "Running upgrade sagadsl_0003 -> sagadsl_0004" in done.stderr
        assert "Running upgrade sagadsl_0004 -> sagadsl_0005" in done.stderr
        assert "Running upgrade sagadsl_0005 -> sagadsl_0006" in done.stderr
        assert "Running upgrade sagadsl_0006 -> sagadsl_0007" in done.stderr
        assert "Running upgrade sagadsl_0007 -> sagadsl_0008" in done.stderr
        assert "Running upgrade sagadsl_0008 -> sagadsl_0009" in done.stderr
        engine = create_engine(url)
        try:
            assert _revision(engine, None) == HEAD
        finally:
            engine.dispose()

    def test_alembic_check_finds_no_drift_after_upgrade(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'cli.db'}"
        assert _alembic("upgrade", "head", url=url).returncode == 0
        done = _alembic("check", url=url)
        assert done.returncode == 0, done.stderr
        assert "No new upgrade operations detected." in done.stdout + done.stderr

    def test_upgrade_head_from_the_checkout_into_a_postgres_schema(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        done = _alembic("-x", f"schema={schema}", "upgrade", "head", url=url)
        assert done.returncode == 0, done.stderr
        engine = create_engine(url)
        try:
            assert _tables(engine, schema) == TABLES | {VERSION_TABLE}
            assert _revision(engine, schema) == HEAD
        finally:
            engine.dispose()
        SagaEngine(url, schema=schema).close()  # accepted as up to date

    def test_alembic_check_finds_no_drift_in_a_postgres_schema(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        assert _alembic("-x", f"schema={schema}", "upgrade", "head", url=url).returncode == 0
        done = _alembic("-x", f"schema={schema}", "check", url=url)
        assert done.returncode == 0, done.stderr
        assert "No new upgrade operations detected." in done.stdout + done.stderr

    def test_the_schema_can_come_from_the_environment(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        done = _alembic("upgrade", "head", url=url, SAGADSL_SCHEMA=schema)
        assert done.returncode == 0, done.stderr
        engine = create_engine(url)
        try:
            assert _revision(engine, schema) == HEAD
        finally:
            engine.dispose()


def _fix(schema: str) -> str:
    return (f"run `saga-admin --schema {schema} db upgrade` (or `alembic upgrade head` from a sagadsl "
            f"checkout, or sagadsl.migrate(url, schema={schema!r}) from code)")


class TestOutOfDatePostgres:
    def test_empty_schema_raises_schema_out_of_date(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        with pytest.raises(SchemaOutOfDateError) as info:
            SagaEngine(url, schema=schema)
        assert str(info.value) == (
            f"sagadsl's tables are not installed in schema {schema!r} of {url}; {_fix(schema)}")
        assert info.value.code == "SCHEMA_OUT_OF_DATE"

    def test_schema_downgraded_to_base_raises_schema_out_of_date(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        sagadsl.migrate(url, schema=schema)
        downgrade(url, "base", schema=schema)
        with pytest.raises(SchemaOutOfDateError, match="sagadsl's tables are not installed"):
            SagaEngine(url, schema=schema)

    def test_tables_without_their_version_table_raise_with_how_to_stamp(
            self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        sagadsl.migrate(url, schema=schema)
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text(f'DROP TABLE "{schema}".{VERSION_TABLE}'))
        finally:
            engine.dispose()
        with pytest.raises(SchemaOutOfDateError) as info:
            SagaEngine(url, schema=schema)
        assert str(info.value) == (
            f"sagadsl's tables exist in schema {schema!r} of {url} but {VERSION_TABLE} records no "
            f"revision; if they were created by this sagadsl version, record that with `alembic stamp "
            f"{HEAD}` from a sagadsl checkout, otherwise drop them and {_fix(schema)}")

    def test_an_older_revision_names_both_revisions(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        sagadsl.migrate(url, schema=schema)
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                # What an older release would have left behind, once there is more than one revision.
                conn.execute(text(f'UPDATE "{schema}".{VERSION_TABLE} SET version_num = :v'),
                             {"v": "sagadsl_0000"})
        finally:
            engine.dispose()
        with pytest.raises(SchemaOutOfDateError) as info:
            SagaEngine(url, schema=schema)
        assert str(info.value) == (
            f"the sagadsl schema in schema {schema!r} of {url} is at revision sagadsl_0000, which this "
            f"version of sagadsl does not know (its newest is {HEAD}); a newer sagadsl migrated it: "
            "upgrade the sagadsl package")

    def test_sqlstorage_never_creates_tables_on_postgres_by_default(self, pg_schema: tuple[str, str]) -> None:
        url, schema = pg_schema
        with pytest.raises(SchemaOutOfDateError):
            SqlStorage(url, schema=schema)
        engine = create_engine(url)
        try:
            assert _tables(engine, schema) == set()
        finally:
            engine.dispose()


class TestSqliteUpgradesItself:
    def test_an_empty_file_gets_the_tables(self, sqlite_url: str) -> None:
        SagaEngine(sqlite_url).close()
        engine = create_engine(sqlite_url)
        try:
            assert _revision(engine, None) == HEAD
            assert TABLES <= _tables(engine, None)
        finally:
            engine.dispose()

    def test_a_downgraded_file_is_upgraded_again(self, sqlite_url: str) -> None:
        sagadsl.migrate(sqlite_url)
        downgrade(sqlite_url, "base")
        SagaEngine(sqlite_url).close()
        engine = create_engine(sqlite_url)
        try:
            assert _revision(engine, None) == HEAD
        finally:
            engine.dispose()


BAD_NAMES = ["", "1schema", "my-schema", 'x"; DROP TABLE users; --', "a b", "s" * 64, "name\n"]
BAD_MESSAGE = ("is not a valid SQL identifier (letters, digits and _, not starting with a digit, at most "
               "63 characters)")


class TestSchemaNames:
    @pytest.mark.parametrize("name", BAD_NAMES)
    def test_sqlstorage_rejects_a_schema_that_is_not_an_identifier(self, name: str, sqlite_url: str) -> None:
        with pytest.raises(ValueError) as info:
            SqlStorage(sqlite_url, schema=name)
        assert str(info.value) == f"schema {name!r} {BAD_MESSAGE}"

    @pytest.mark.parametrize("name", BAD_NAMES)
    def test_migrate_rejects_a_schema_that_is_not_an_identifier(self, name: str, sqlite_url: str) -> None:
        with pytest.raises(ValueError, match="is not a valid SQL identifier"):
            sagadsl.migrate(sqlite_url, schema=name)

    def test_alembic_command_line_rejects_a_bad_schema(self, tmp_path: Path) -> None:
        done = _alembic("-x", "schema=bad-name", "upgrade", "head", url=f"sqlite:///{tmp_path / 'x.db'}")
        assert done.returncode != 0
        assert f"schema 'bad-name' {BAD_MESSAGE}" in done.stderr

    @pytest.mark.parametrize("name", ["orders", "_private", "Sagas_2", "s" * 63])
    def test_accepts_plain_identifiers(self, name: str, pg_schema: tuple[str, str]) -> None:
        url, _ = pg_schema
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                # Accepted by the check; whether it exists is another matter.
                assert current_revision(conn, name) is None
        finally:
            engine.dispose()


USER_ENV = '''
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=None,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()
'''

USER_REVISION = '''
import sqlalchemy as sa
from alembic import op

revision = "app_0001"
down_revision = None
branch_labels = ("app",)
depends_on = None


def upgrade():
    op.create_table("app_orders", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("app_orders")
'''


class TestIncludedInAUsersOwnHistory:
    """A project lists sagadsl's versions folder in its own ``version_locations``."""

    @pytest.fixture
    def project(self, tmp_path: Path) -> tuple[Path, str]:
        (tmp_path / "migrations" / "versions").mkdir(parents=True)
        (tmp_path / "migrations" / "env.py").write_text(USER_ENV)
        (tmp_path / "migrations" / "versions" / "app_0001.py").write_text(USER_REVISION)
        url = f"sqlite:///{tmp_path / 'app.db'}"
        (tmp_path / "alembic.ini").write_text(textwrap.dedent(f"""\
            [alembic]
            script_location = %(here)s/migrations
            version_locations = %(here)s/migrations/versions {migrations_dir() / 'versions'}
            path_separator = space
            sqlalchemy.url = {url}
            """))
        return tmp_path, url

    def test_upgrade_heads_installs_both_histories_in_the_projects_version_table(
            self, project: tuple[Path, str]) -> None:
        path, url = project
        done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "heads"], check=False, cwd=path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        engine = create_engine(url)
        try:
            assert _tables(engine, None) == TABLES | {"app_orders", "alembic_version"}
            with engine.connect() as conn:
                assert sorted(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == [
                    "app_0001", HEAD]
                assert current_revision(conn) == HEAD
        finally:
            engine.dispose()

    def test_sagadsl_accepts_the_schema_and_does_not_migrate_it_again(
            self, project: tuple[Path, str]) -> None:
        path, url = project
        done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "heads"], check=False, cwd=path,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        SagaEngine(url).close()
        sagadsl.migrate(url)
        engine = create_engine(url)
        try:
            assert VERSION_TABLE not in _tables(engine, None)
        finally:
            engine.dispose()



def test_no_index_holds_a_column_that_every_step_commit_changes(sqlite_url: str) -> None:
    # A step commit writes these; were any of them indexed, PostgreSQL could
    # not make the update HOT and would add an entry to every index per step.
    per_step = {"updated_at", "current_step", "stuck_after", "version", "claims", "lease_expires_at"}
    SqlStorage(sqlite_url).close()
    engine = create_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            # The SQL of every index, expression-based and partial ones included.
            definitions = [sql for (sql,) in conn.execute(text(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'sagadsl_workflows' "
                "AND sql IS NOT NULL"))]
    finally:
        engine.dispose()
    named = {column for sql in definitions for column in per_step if re.search(rf"\b{column}\b", sql)}
    assert any("ix_sagadsl_workflows_due" in sql for sql in definitions) and not named, definitions
