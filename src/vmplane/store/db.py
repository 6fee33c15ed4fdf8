"""The Store: one async engine, short write transactions, migrations at start-up."""

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import JSON, Boolean, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ..errors import NotReady
from . import events  # the event log is part of every write transaction
from .events import EVENTS_FLAG


class StoreUnavailable(NotReady):
    """The database cannot complete a transaction now: the connection was refused or cut, the
    server is shutting down or starting up (a PostgreSQL restart, a failover), or it chose
    this transaction as a deadlock's victim. The transaction did not commit — or, when the
    connection broke during the COMMIT itself, its outcome is unknown — so a caller must not
    act as if it had, nor undo what it did outside the store: it tries again later (an API
    answer is 503; a task's run stops as an interrupted one, and a later attempt resumes it)."""


_UNREACHABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "40P01", "40001")
"""connection exceptions (class 08), admin_shutdown, crash_shutdown, cannot_connect_now; and
deadlock_detected and serialization_failure, which PostgreSQL asks the client to retry"""


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (SQLAlchemy's wrapper, the driver's error, or its cause)."""
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        exc = orig.__cause__ if orig is not None and orig.__cause__ is not None else (orig or exc)
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def _unavailable(exc: BaseException) -> StoreUnavailable:
    if _sqlstate(exc) in ("40P01", "40001"):
        return StoreUnavailable("the database ended this transaction to resolve a conflict with another (a deadlock); try again")
    return StoreUnavailable(f"the database cannot be reached now ({type(exc).__name__}); try again shortly")


def _unreachable(exc: BaseException, connecting: bool) -> bool:
    """Whether `exc` says the database cannot serve the transaction now (rather than refusing
    a statement for what it says).
    A refused or reset socket counts only while connecting: inside a transaction block the
    caller's own code may meet one of its own."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = _sqlstate(exc)
    if state is not None and state.startswith(_UNREACHABLE_SQLSTATES):
        return True
    return connecting and isinstance(exc, OSError)  # refused, reset, timed out


class _Reach:
    connected = False


@contextlib.contextmanager
def _out_of_reach() -> Iterator[_Reach]:
    """Around a PostgreSQL connection's block: an error saying the database cannot serve it now
    is raised as StoreUnavailable (set `connected` once the connection is had: a socket error
    counts only before)."""
    reach = _Reach()
    try:
        yield reach
    except StoreUnavailable:
        raise
    except Exception as exc:
        if _unreachable(exc, not reach.connected):
            raise _unavailable(exc) from exc
        raise


def json_loads(text: str | bytes) -> Any:
    """JSON columns as the store reads them: by orjson (a page of 50 VMs decodes 50 specs and
    their tags: 10 % of the page's time by the json module), by the json module for what
    orjson refuses (NaN, which json.dumps may have written)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def _converted(row: tuple[Any, ...], convert: tuple[Callable[[Any], Any] | None, ...]) -> tuple[Any, ...]:
    values = list(row)
    for i, f in enumerate(convert):
        if f is not None and values[i] is not None:
            values[i] = f(values[i])
    return tuple(values)


_Plan = tuple[str, tuple[str, ...], dict[str, Any], tuple[str, ...], tuple[Callable[[Any], Any] | None, ...]]
"""a statement as QuickReads runs it: SQL, its parameters' order, the values it carries, column names, conversions"""


class QuickReads:
    """The hottest reads on SQLite (a VM by id or uuid: every `GET /vms/{id}`), through the
    stdlib driver alone: one connection of its own in autocommit mode (each SELECT sees what
    is committed when it runs, and holds no transaction after), used synchronously on the
    event loop's thread as the store's other SQLite reads are. SQLAlchemy's execution of the
    same statement (connection checkout, its cache key, the result's machinery) cost ~30 µs of
    the ~145 µs a single GET took (bench/floor.py's profile); this costs a few.

    `records` takes statements made once (module constants): each is compiled once, for the
    SQLite dialect, with its columns' JSON and Boolean values converted as SQLAlchemy would.
    It makes records of the rows, and keeps the last `RECORDS` made, by the row's exact
    content: a row read again unchanged is the same record (records are immutable), without
    decoding its JSON or building the record again (two thirds of a page of 50 VMs' reading)."""

    RECORDS = 4096

    def __init__(self, path: str, dialect: Any) -> None:
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA busy_timeout=15000")
        self._dialect = dialect
        self._plans: dict[Any, _Plan] = {}
        self._records: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def _plan(self, statement: Any) -> "_Plan":
        plan = self._plans.get(statement)
        if plan is None:
            compiled = statement.compile(dialect=self._dialect)
            names = tuple(c.name for c in statement.selected_columns)
            convert: list[Callable[[Any], Any] | None] = []
            for c in statement.selected_columns:
                if isinstance(c.type, JSON):
                    convert.append(json_loads)
                elif isinstance(c.type, Boolean):
                    convert.append(bool)
                else:
                    convert.append(None)
            fixed = {name: b.effective_value for name, b in compiled.binds.items() if not b.required}  # values the statement carries (an OFFSET 0, say)
            plan = self._plans[statement] = (str(compiled), tuple(compiled.positiontup or ()), fixed, names, tuple(convert))
        return plan

    def records(self, statement: Any, params: dict[str, Any], make: Callable[[tuple[Any, ...], tuple[str, ...]], Any]) -> list[Any]:
        """`make(row, names)` of each row of `statement` (the same `make` for a statement
        every time), made once per distinct row while it is among the last `RECORDS` made."""
        sql, order, fixed, names, convert = self._plan(statement)
        raw = self._conn.execute(sql, tuple(params[n] if n in params else fixed[n] for n in order)).fetchall()
        made, out = self._records, []
        for row in raw:
            key = (sql, *row)
            record = made.get(key)
            if record is None:
                record = made[key] = make(_converted(row, convert), names)
                if len(made) > self.RECORDS:
                    made.popitem(last=False)
            else:
                made.move_to_end(key)
            out.append(record)
        return out

    def close(self) -> None:
        self._conn.close()


MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_ID = 7_420_001  # PostgreSQL advisory lock: one replica migrates at a time
log = logging.getLogger("vmplane.store")


class SyncConnection:
    """The async connection interface over a synchronous SQLAlchemy connection.

    Used for SQLite: its queries take tens of microseconds, far less than the thread hop
    and greenlet switch each call through an async driver (aiosqlite) cost: 3-4x less
    throughput in our measurements. Statements run on the event loop's thread.
    """

    def __init__(self, conn: Connection) -> None:
        self.sync_connection = conn

    @property
    def info(self) -> dict[Any, Any]:
        return self.sync_connection.info

    @property
    def dialect(self) -> Any:
        return self.sync_connection.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        if parameters is None:
            return self.sync_connection.execute(statement)
        return self.sync_connection.execute(statement, parameters)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[None]:
        with self.sync_connection.begin_nested():
            yield

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.sync_connection, *args)


class Store:
    """Owns the database engine. `read()` for queries, `write()` for one short transaction.

    SQLite runs through the synchronous driver (see SyncConnection), and writers take turns
    on an asyncio lock: SQLite has one writer anyway. PostgreSQL runs through asyncpg;
    writers run concurrently and rely on row locks and conditional updates.
    """

    def __init__(self, url: str, *, pool_size: int = 10, secret_box: Any = None) -> None:
        """`secret_box` (services.secrets.SecretBox): migrations that seal stored secrets use it."""
        self.url = url
        self.secret_box = secret_box
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        self._sync_engine: Engine | None = None
        self._write_lock = asyncio.Lock()
        self.quick: QuickReads | None = None
        """the hottest reads' own way in, on a SQLite file (None on PostgreSQL: they take `read()`)"""
        self.on_events: list[Callable[[], None]] = []
        """Called after a write transaction that emitted events has committed."""

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("store is not open")
        return self._engine

    async def open(self) -> None:
        if self.dialect == "sqlite":
            path = self.url.split("///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # any SQLite URL (`sqlite://`, `sqlite+aiosqlite://` of older configs) runs on sqlite3
            sync_url = "sqlite+pysqlite://" + self.url.split("://", 1)[1]
            sync = create_engine(sync_url, pool_size=self._pool_size, max_overflow=20, json_deserializer=json_loads)

            @event.listens_for(sync, "connect")
            def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=15000")
                cur.close()

            self._sync_engine = sync
            with sync.begin() as conn:
                before, after = upgrade(conn, self.secret_box)
            self._log_migrated(before, after)
            if path and path != ":memory:" and "mode=memory" not in self.url:
                self.quick = QuickReads(path.split("?", 1)[0], sync.dialect)
            return
        # Tasks hold a connection only for short transactions, never two at once; 50 in all
        # leaves PostgreSQL's default 100 for a second replica.
        engine = create_async_engine(self.url, pool_size=self._pool_size, max_overflow=40, pool_pre_ping=True, json_deserializer=json_loads)
        self._engine = engine
        async with engine.begin() as aconn:
            await aconn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
            before, after = await aconn.run_sync(upgrade, self.secret_box)
        self._log_migrated(before, after)

    def _log_migrated(self, before: str | None, after: str | None) -> None:
        """One start-up line for the whole upgrade (alembic's line per migration is at debug)."""
        where = make_url(self.url).render_as_string(hide_password=True)
        if self.dialect == "sqlite":
            where = self.url.split("///", 1)[1] or ":memory:"
        if before == after:
            log.info("database at %s: up to date (%s)", where, after)
        else:
            log.info("database at %s: migrated %s -> %s", where, before or "0000", after)

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
        if self.quick is not None:
            self.quick.close()
            self.quick = None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        if self._sync_engine is not None:
            with self._sync_engine.connect() as sconn:
                yield SyncConnection(sconn)  # type: ignore[misc]
            return
        with _out_of_reach() as reach:
            async with self.engine.connect() as conn:
                reach.connected = True
                yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One transaction; committed when the block ends, rolled back if it raises."""
        # The events queued on a connection are dropped at the end, through the dict itself:
        # asking a connection whose statement was cancelled for its `info` raises (it wants a
        # rollback first), which would turn the cancellation into an ordinary error.
        if self._sync_engine is not None:
            async with self._write_lock:
                with self._sync_engine.begin() as sconn:
                    # sqlite3 itself begins a transaction only before INSERT/UPDATE/DELETE, so a
                    # SAVEPOINT (`begin_nested`) issued first began one of SQLite's own, whose
                    # RELEASE committed all so far: a create refused later (a host port another
                    # VM holds) left its VM row behind. An explicit BEGIN makes it one transaction.
                    sconn.exec_driver_sql("BEGIN")
                    conn = SyncConnection(sconn)
                    info = sconn.info
                    try:
                        yield conn  # type: ignore[misc]
                        emitted = await events.flush(conn)  # type: ignore[arg-type]
                    finally:
                        info.pop(EVENTS_FLAG, None)
        else:
            with _out_of_reach() as reach:
                async with self.engine.begin() as aconn:
                    reach.connected = True
                    info = aconn.info
                    try:
                        yield aconn
                        emitted = await events.flush(aconn)
                    finally:
                        info.pop(EVENTS_FLAG, None)
        if emitted:
            for callback in self.on_events:
                callback()

    async def ping(self) -> None:
        async with self.read() as conn:
            await conn.execute(text("SELECT 1"))


def upgrade(conn: Connection, secret_box: Any = None) -> tuple[str | None, str | None]:
    """Upgrade to the newest revision; (revision before, revision after), None: an empty database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    cfg.attributes["secret_box"] = secret_box
    with _quiet(logging.getLogger("alembic")):
        before = MigrationContext.configure(conn).get_current_revision()
        command.upgrade(cfg, "head")
        return before, MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """`logger`'s info lines only at debug level: they are kept when the server runs with
    --log-level debug, and otherwise summed up in one line by the caller."""
    level = logger.level
    if not logger.isEnabledFor(logging.DEBUG):
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
