"""The ``saga-admin`` command group: global options, database access, errors and exit codes.

Every error reaches the operator as one line on stderr, with any password of
a database URL replaced by ``***``. Exit codes: 0 ok, 1 operational error
(database unreachable, saga not found, retry refused...), 2 usage error.

Command modules (``inspect``, ``operate``, ``stats``, ``db``...) add their
commands to :data:`cli` with ``@cli.command``; ``sagadsl.cli`` imports them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError

from .. import __version__
from ..engine import DEFAULT_DATABASE_URL, SagaEngine
from ..errors import SagaError
from ..storage.connect import create_engine
from ..storage.sql import SqlStorage
from ..urls import mask_url, secrets_in

__all__ = ["DEFAULT_DATABASE_URL", "AdminGroup", "CliError", "RedactingFormatter", "Settings",
           "cli", "database_errors", "redacted", "settings_of"]

#: Set to 1 to let unexpected exceptions through with their traceback.
DEBUG_ENV = "SAGADSL_CLI_DEBUG"
_secrets: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("saga_admin_secrets",
                                                                         default=())


class CliError(click.ClickException):
    """An operational failure: printed as one line on stderr, exit code 1."""

    exit_code = 1


def redacted(text: str) -> str:
    """``text`` with every known URL password (user info or query parameter) replaced by ``***``."""
    for secret in sorted(_secrets.get(), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class RedactingFormatter(logging.Formatter):
    """A log formatter that masks the database URL's passwords in what it writes."""

    def format(self, record: logging.LogRecord) -> str:
        return redacted(super().format(record))


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report(message: str) -> None:
    click.echo(f"Error: {redacted(_one_line(message))}", err=True)


class AdminGroup(click.Group):
    """A click group that reports every failure as one redacted line and a stable exit code."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        secrets: set[str] = set()
        for text in [*argv, os.environ.get("SAGADSL_DATABASE_URL", "")]:
            secrets |= secrets_in(text)
        token = _secrets.set(tuple(secrets))
        try:
            code = self._run(argv, prog_name, complete_var, **extra)
        finally:
            _secrets.reset(token)
        if standalone_mode:
            sys.exit(code)
        return code

    def _run(self, argv: list[str], prog_name: str | None, complete_var: str | None,
             **extra: Any) -> int:
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            return 2
        except click.UsageError as exc:
            hint = ""
            if exc.ctx is not None:
                hint = f" (see '{exc.ctx.command_path} --help')"
            _report(f"{exc.format_message()}{hint}")
            return 2
        except click.ClickException as exc:
            _report(exc.format_message())
            return exc.exit_code
        except click.Abort:
            _report("aborted")
            return 1
        except Exception as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            _report(f"unexpected {type(exc).__name__}: {exc} (set {DEBUG_ENV}=1 for a traceback)")
            return 1
        return result if isinstance(result, int) else 0


@dataclass
class Settings:
    """The global options, shared by every command through the click context."""

    database_url: str
    schema: str | None
    output: str
    connect_timeout: float
    _engine: SagaEngine | None = field(default=None, repr=False)

    @property
    def json(self) -> bool:
        """True when the operator asked for ``--output json``."""
        return self.output == "json"

    @property
    def masked_url(self) -> str:
        """The database URL with its password masked."""
        return mask_url(self.database_url)

    def url(self) -> URL:
        """The parsed URL, with psycopg 3 as the PostgreSQL driver.

        Raises:
            click.BadParameter: the URL cannot be parsed or is not SQLite/PostgreSQL.
        """
        try:
            url = make_url(self.database_url)
        except (ArgumentError, ValueError) as exc:
            raise click.BadParameter(
                f"cannot parse {self.masked_url!r} as a database URL ({redacted(str(exc))}); "
                "expected e.g. sqlite:///sagadsl.db or postgresql+psycopg://user@host/db",
                param_hint="'--database-url' / SAGADSL_DATABASE_URL") from None
        backend = url.get_backend_name()
        if backend == "postgresql":
            if url.get_driver_name() in ("", "psycopg2", "psycopg2cffi"):
                url = url.set(drivername="postgresql+psycopg")
        elif backend != "sqlite":
            raise click.BadParameter(
                f"{self.masked_url!r} is a {backend} URL; sagadsl stores sagas in SQLite "
                "(sqlite:///path.db) or PostgreSQL (postgresql+psycopg://user@host/db)",
                param_hint="'--database-url' / SAGADSL_DATABASE_URL")
        return url

    def sqlite_path(self, url: URL) -> Path | None:
        """The file of a SQLite URL, or None for other backends and in-memory SQLite."""
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return None
        return Path(str(url.database))

    def require_existing_file(self, url: URL) -> None:
        """Refuse a SQLite URL whose file does not exist instead of creating an empty database."""
        path = self.sqlite_path(url)
        if path is not None and not path.exists():
            raise CliError(
                f"no SQLite database at {path.resolve()} (from {self.masked_url}); check "
                "--database-url / SAGADSL_DATABASE_URL, or create it with `saga-admin db upgrade`")

    def engine(self) -> SagaEngine:
        """A :class:`SagaEngine` on the database, which must exist and be up to date.

        The CLI never migrates or creates a database behind the operator's
        back: only ``saga-admin db upgrade`` does.
        """
        if self._engine is None:
            url = self.url()
            self.require_existing_file(url)
            with database_errors(self, connecting=True):
                try:
                    target: str | Engine = (self._sql_engine(url) if url.get_backend_name() == "postgresql"
                                            else url.render_as_string(hide_password=False))
                    storage = SqlStorage(target, schema=self.schema, auto_migrate=False, pool_size=4)
                except ValueError as exc:
                    raise click.BadParameter(str(exc), param_hint="'--schema' / SAGADSL_SCHEMA") from None
            self._engine = SagaEngine(storage)
        return self._engine

    def _sql_engine(self, url: URL) -> Engine:
        # The library's connection settings (psycopg 3 for postgres:// URLs,
        # TCP keepalives), with a connect timeout from --connect-timeout so
        # that an unreachable server fails in seconds.
        connect_args: dict[str, Any] = {}
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = max(1, round(self.connect_timeout))
        return create_engine(url, pool_size=4, max_overflow=4, connect_args=connect_args)

    @contextlib.contextmanager
    def connection(self, *, create: bool = False) -> Iterator[Connection]:
        """A plain connection for the ``db`` commands (no schema check)."""
        url = self.url()
        if not create:
            self.require_existing_file(url)
        engine = self._sql_engine(url)
        try:
            with database_errors(self, connecting=True):
                conn = engine.connect()
            with conn, database_errors(self):
                yield conn
        finally:
            engine.dispose()

    def close(self) -> None:
        """Close the engine, if one was opened."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def settings_of(ctx: click.Context) -> Settings:
    """The :class:`Settings` of the running command."""
    settings = ctx.find_object(Settings)
    assert settings is not None, "saga-admin commands run under the saga-admin group"
    return settings


def _driver_message(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig) if orig is not None else str(exc)
    # SQLAlchemy appends a multi-line "Background on this error" link.
    text = text.split("(Background on this error")[0]
    return _one_line(text) or type(exc).__name__


@contextlib.contextmanager
def database_errors(settings: Settings, *, connecting: bool = False) -> Iterator[None]:
    """Turn database and sagadsl errors into one-line :class:`CliError` messages."""
    try:
        yield
    except click.ClickException:
        raise
    except SagaError as exc:
        raise CliError(str(exc)) from None
    except DBAPIError as exc:
        if connecting or exc.connection_invalidated:
            raise CliError(f"cannot connect to {settings.masked_url}: {_driver_message(exc)}") from None
        raise CliError(f"database error on {settings.masked_url}: {_driver_message(exc)}") from None
    except SQLAlchemyError as exc:
        raise CliError(f"database error on {settings.masked_url}: {_driver_message(exc)}") from None
    except ModuleNotFoundError as exc:
        raise CliError(f"cannot use {settings.masked_url}: the driver module {exc.name!r} is not "
                       "installed (pip install 'sagadsl[postgres]' for PostgreSQL)") from None



@click.group(cls=AdminGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.option("--database-url", envvar="SAGADSL_DATABASE_URL", default=DEFAULT_DATABASE_URL,
              show_default=True, metavar="URL",
              help="Database holding the sagas [env: SAGADSL_DATABASE_URL]; "
                   "e.g. postgresql+psycopg://app@db/app.")
@click.option("--schema", envvar="SAGADSL_SCHEMA", default=None, metavar="NAME",
              help="PostgreSQL schema of sagadsl's tables [env: SAGADSL_SCHEMA]; "
                   "default: the search path.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              envvar="SAGADSL_OUTPUT", show_default=True,
              help="Tables for people, JSON for scripts [env: SAGADSL_OUTPUT].")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=5.0, show_default=True,
              metavar="SECONDS", help="Give up connecting to PostgreSQL after this long.")
@click.version_option(__version__, "--version", prog_name="saga-admin")
@click.pass_context
def cli(ctx: click.Context, database_url: str, schema: str | None, output: str,
        connect_timeout: float) -> None:
    """Operate sagadsl sagas: find stuck and dead-lettered ones, see why, retry them.

    Passwords in database URLs are masked in everything printed. Exit codes:
    0 ok, 1 operational error, 2 usage error; errors go to stderr as one line.
    """
    settings = Settings(database_url=database_url, schema=schema or None, output=output,
                        connect_timeout=connect_timeout)
    ctx.obj = settings
    ctx.call_on_close(settings.close)
