"""Hot-path statements run as driver SQL, compiled once.

Executing a compiled SQLAlchemy statement rebuilds, at every execution, its
parameters and its schema-translated SQL; for the few statements a saga
sends per step that was most of the engine's CPU per commit that is not the
driver's. Here each statement is compiled once per engine into the SQL the
driver receives and the bind processors of its parameters, then run with
``exec_driver_sql``, which keeps SQLAlchemy's connection, events and error
handling.

A statement whose compiled form expects a parameter the caller did not pass
(a column's Python-side default, which SQLAlchemy fills in itself) is run
the ordinary way instead, so nothing is ever sent without its value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.sql import ClauseElement, Executable
from sqlalchemy.sql.compiler import SQLCompiler

__all__ = ["DriverStatements"]


@dataclass(frozen=True)
class _Compiled:
    sql: str
    processors: dict[str, Callable[[Any], Any]]
    #: Parameters the caller must pass.
    required: frozenset[str]
    #: Literal values compiled into the statement (``literal(...)``), passed along.
    constants: dict[str, Any]


class DriverStatements:
    """The driver SQL of one engine's hot-path statements, by statement object."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        # Parameters by name: what exec_driver_sql can hand to the driver as a dict.
        self._usable = engine.dialect.paramstyle in ("pyformat", "named")
        self._compiled: dict[ClauseElement, _Compiled] = {}

    def execute(self, conn: Connection, stmt: Executable, params: dict[str, Any]) -> CursorResult[Any]:
        """Run ``stmt`` with ``params`` (bind names as keys); as ``conn.execute`` would."""
        compiled = self._compile(stmt) if self._usable else None
        if compiled is None or not compiled.required <= params.keys():
            return conn.execute(stmt, params)
        params.update(compiled.constants)
        for name, process in compiled.processors.items():
            params[name] = process(params[name])
        return conn.exec_driver_sql(compiled.sql, params)

    def _compile(self, stmt: Executable) -> _Compiled | None:
        assert isinstance(stmt, ClauseElement)
        hit = self._compiled.get(stmt)
        if hit is None:
            translate = self._engine.get_execution_options().get("schema_translate_map")
            compiled = stmt.compile(dialect=self._engine.dialect, schema_translate_map=translate)
            assert isinstance(compiled, SQLCompiler)
            sql = compiled.string
            if translate:
                sql = compiled.preparer._render_schema_translates(sql, translate)
            # The hot-path statements bind scalars and arrays: one processor per parameter.
            processors: dict[str, Callable[[Any], Any]] = {
                name: process for name, process in compiled._bind_processors.items() if callable(process)}
            constants = {name: bind.value for bind, name in compiled.bind_names.items()
                         if bind.value is not None and bind.callable is None}
            required = frozenset(compiled.bind_names.values()) - constants.keys()
            hit = self._compiled[stmt] = _Compiled(sql, processors, required, constants)
        return hit
