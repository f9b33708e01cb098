"""The wheel built from this checkout ships its migrations and installs a working schema.

Slow (a wheel build and a fresh virtualenv whose dependencies come from the
package index), but it runs in CI: it is the only test that proves an
installed sagadsl does not depend on files of the checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from sagadsl.storage.schema import head_revision

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
#: The newest revision the checkout ships: the installed wheel must carry the same.
HEAD = head_revision()


def _run(*args: str | Path, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SAGADSL_DATABASE_URL", "SAGADSL_SCHEMA", "VIRTUAL_ENV")}
    done = subprocess.run([str(a) for a in args], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # The checkout's own build backend (hatchling, in the test extras): no download.
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "--wheel-dir", out, ROOT, cwd=out)
    (built,) = out.glob("sagadsl-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ``bin`` folder of a fresh virtualenv with only the wheel (and its dependencies) installed."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(env_dir)
    bin_dir = env_dir / "bin"
    _run(bin_dir / "python", "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel,
         cwd=env_dir, timeout=300)
    yield bin_dir


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory that is not the checkout (nothing of it on the path)."""
    assert ROOT not in tmp_path.parents
    return tmp_path


def test_the_wheel_contains_the_migrations(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"sagadsl/migrations/env.py", "sagadsl/migrations/script.py.mako",
            "sagadsl/migrations/versions/0001_initial.py", "sagadsl/py.typed"} <= names
    assert not any(n.startswith(("migrations/", "tests/")) for n in names)


def test_migrate_from_code_uses_the_shipped_migrations(installed: Path, outside: Path) -> None:
    url = f"sqlite:///{outside / 'app.db'}"
    done = _run(installed / "python", "-c",
                "import sagadsl, sagadsl.storage.schema as s; "
                f"sagadsl.migrate({url!r}); print(s.migrations_dir())", cwd=outside)
    assert done.stdout.strip().endswith("site-packages/sagadsl/migrations")
    assert _revision(url) == HEAD


def test_saga_admin_db_upgrade_installs_the_schema(installed: Path, outside: Path) -> None:
    admin = installed / "saga-admin"
    if not admin.exists():
        pytest.fail("the wheel installs no saga-admin console script")
    _run(admin, "--database-url", "sqlite:///x.db", "db", "upgrade", cwd=outside)
    assert _revision(f"sqlite:///{outside / 'x.db'}") == HEAD


def test_a_project_history_can_include_the_installed_migrations(installed: Path, outside: Path) -> None:
    # The documented form: sagadsl's versions as a package resource.
    (outside / "migrations" / "versions").mkdir(parents=True)
    (outside / "migrations" / "env.py").write_text(textwrap.dedent("""\
        from alembic import context
        from sqlalchemy import create_engine, pool

        engine = create_engine(context.config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
        with engine.connect() as connection:
            context.configure(connection=connection, render_as_batch=True)
            with context.begin_transaction():
                context.run_migrations()
        """))
    (outside / "alembic.ini").write_text(textwrap.dedent("""\
        [alembic]
        script_location = %(here)s/migrations
        version_locations = %(here)s/migrations/versions sagadsl:migrations/versions
        path_separator = space
        sqlalchemy.url = sqlite:///%(here)s/app.db
        """))
    _run(installed / "alembic", "upgrade", "heads", cwd=outside)
    engine = create_engine(f"sqlite:///{outside / 'app.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [HEAD]
        assert {"sagadsl_workflows", "sagadsl_steps"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT version_num FROM sagadsl_alembic_version")).scalar()
    finally:
        engine.dispose()
