"""Database queries: each statement a program runs, with the user's line that ran it.

Why: an N+1 (a view that runs one query per row) shows in samples as the driver's
``execute``, with nothing saying "1,501 queries in this request". So each query is
recorded with existing event kinds (no new kind in the format):

- ``REGION_BEGIN(task, "db")`` when the statement starts, ``REGION_END(task, "db")`` when
  ``execute`` returns or raises (``task`` is the current ``pyflight.task``, 0 if none);
- right after the begin, ``LOG(task, "db", message)`` where ``message`` is the statement
  normalised (literals and placeholders become ``?``, ``IN (?, ?, ...)`` becomes
  ``IN (...)``, whitespace collapsed, cut at 300 characters) then a line
  ``"@ FILE:LINE in FUNCTION"``: the innermost frame outside the standard library,
  installed packages and pyflight (the view's line, not the ORM's or the driver's).

Normalising drops the values (a literal is data, often personal); nothing else is
redacted. Normalised statements and the site messages repeat, so the trace stores each
string once per generation.

What is wrapped:

- ``sqlite3.connect`` (and ``sqlite3.dbapi2.connect``, patched when the program imports
  ``sqlite3``, before or after install): a connection made without a
  ``factory`` is of a ``sqlite3.Connection`` subclass whose ``execute``/``executemany``/
  ``executescript`` and whose cursors' (from ``cursor()`` without a factory) are
  recorded, and its ``commit``/``rollback`` as the statements ``COMMIT``/``ROLLBACK``
  (where a write transaction ends: who held the write lock until when; also the
  commit/rollback of ``with connection:`` and the rollback of closing one
  mid-transaction). The type stays a ``sqlite3.Connection`` (``isinstance`` holds);
- Django's ``CursorWrapper.execute``/``executemany`` (every Django backend goes through
  it), patched when ``django.db.backends.utils`` is imported, before or after install;
- psycopg 3's ``Cursor.execute``/``executemany`` (PostgreSQL; ``connection.execute`` too),
  patched when ``psycopg.cursor`` is imported, and its ``AsyncCursor``'s (awaited queries:
  the region spans the await), patched when ``psycopg.cursor_async`` is;
- psycopg2's ``connect`` (PostgreSQL; its cursor is a C type, so a connection made without
  a ``cursor_factory`` gets a recorded subclass of ``psycopg2.extensions.cursor``: the type
  and ``isinstance`` hold), patched when ``psycopg2`` is imported, and the Python cursor
  classes of ``psycopg2.extras`` (``DictCursor``, ``RealDictCursor``, ...) when it is;
- ``record_cursor_class(cls)``: the same for any DB-API cursor class written in Python.

A query inside a recorded query (Django's cursor calling sqlite3's) is recorded once.
Cost: nothing until a program imports a database module (an import hook looks at
module names only; pyflight does not import ``sqlite3`` itself); then, per query, the
frame walk to the user's line and three events: a trivial in-memory sqlite3 lookup
went from ~2.6 to ~6 us with the C core (~15 us with the pure-Python core), pinned to
one CPU on a loaded 2-core machine; a Django ORM query costs ~100-200 us by itself.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.machinery
import os
import re
import sys
import sysconfig
import threading
from collections.abc import Callable, Sequence
from types import FrameType, ModuleType
from typing import Any

from pyflight.annotate import current_task_id
from pyflight.core import backend
from pyflight.core.events import Kind
from pyflight.sources import register
from pyflight.sources.base import Source

__all__ = ["DB_CATEGORY", "DB_REGION", "DbapiSource", "normalize_sql", "record_cursor_class"]

#: Region name and log category of a query.
DB_REGION = "db"
DB_CATEGORY = "db"
MAX_SQL = 300
_K_BEGIN = int(Kind.REGION_BEGIN)
_K_END = int(Kind.REGION_END)
_K_LOG = int(Kind.LOG)

# ---------------------------------------------------------------------------------------
# normalising a statement

_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w.\"])-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_PLACEHOLDER = re.compile(r"%\(\w+\)s|%s|\$\d+|(?<![:\w]):\w+|\?")
_IN_LIST = re.compile(r"\(\s*\?(?:\s*,\s*\?)+\s*\)")
_ROWS = re.compile(r"\((?:\?|\.\.\.)\)(?:\s*,\s*\((?:\?|\.\.\.)\))+")
_SPACE = re.compile(r"\s+")
_normalized: dict[str, str] = {}
_NORMALIZED_MAX = 2048


def _composed_sql(sql: object, depth: int = 0) -> str | None:
    """The text of a psycopg2 or psycopg ``sql.Composed`` / ``SQL`` / ``Identifier`` /
    ``Literal`` / ``Placeholder`` statement, without the connection their ``as_string``
    needs: SQL parts as written, identifiers double-quoted, values and placeholders as
    ``?``. None if `sql` is none of these (its repr is no statement)."""
    module = type(sql).__module__
    if module not in ("psycopg2.sql", "psycopg.sql") or depth > 16:
        return None
    inner = getattr(sql, "_wrapped" if module == "psycopg2.sql" else "_obj", None)
    kind = type(sql).__name__
    if kind == "SQL" and isinstance(inner, str):
        return inner
    if kind == "Identifier" and isinstance(inner, tuple):
        return ".".join('"' + str(name).replace('"', '""') + '"' for name in inner)
    if kind in ("Literal", "Placeholder"):
        return "?"
    if kind == "Composed" and isinstance(inner, list):
        parts = [_composed_sql(part, depth + 1) for part in inner]
        return None if None in parts else "".join(parts)  # type: ignore[arg-type]
    return None


def normalize_sql(sql: object) -> str:
    """The statement with its values gone: ``WHERE id = 42`` and ``WHERE id = %s`` both
    read ``WHERE id = ?``; cached (statements repeat)."""
    if not isinstance(sql, str):
        if isinstance(sql, bytes | bytearray):
            sql = sql.decode("utf-8", "replace")
        else:
            sql = _composed_sql(sql) or str(sql)
    found = _normalized.get(sql)
    if found is not None:
        return found
    text = _STRING.sub("?", sql)
    text = _PLACEHOLDER.sub("?", text)
    text = _NUMBER.sub("?", text)
    text = _IN_LIST.sub("(...)", text)
    text = _ROWS.sub("(...), ...", text)
    text = _SPACE.sub(" ", text).strip()
    if len(text) > MAX_SQL:
        text = text[: MAX_SQL - 3] + "..."
    if len(_normalized) >= _NORMALIZED_MAX:
        _normalized.clear()
    _normalized[sql] = text
    return text


# ---------------------------------------------------------------------------------------
# the user's line


def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths.get(key, "") for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # pyflight itself
    dirs.add(os.path.dirname(os.__file__))
    return tuple(sorted(os.path.join(d, "") for d in dirs if d))


_PREFIXES = _library_prefixes()
_is_library_file: dict[str, bool] = {}


def _library(filename: str) -> bool:
    known = _is_library_file.get(filename)
    if known is None:
        known = (
            filename.startswith(_PREFIXES)
            or filename.startswith("<")
            or "site-packages" in filename
            or "dist-packages" in filename
        )
        if len(_is_library_file) < 8192:
            _is_library_file[filename] = known
    return known


#: (statement, file, instruction offset) -> the LOG message (bounded: cleared when full). Not keyed by
#: the code object: hashing one hashes all its bytecode, every time
_messages: dict[tuple[object, str, int], str] = {}
_MESSAGES_MAX = 4096


def _message(sql: object, frame: FrameType) -> str:
    """``"STATEMENT\n@ FILE:LINE in FUNCTION"``: the normalised statement and the innermost
    frame of the program's own code from ``frame`` outwards (else ``frame`` itself)."""
    first: FrameType | None = frame
    found: FrameType | None = frame
    while found is not None and _library(found.f_code.co_filename):
        found = found.f_back
    site = found if found is not None else first
    assert site is not None
    code = site.f_code
    if not isinstance(sql, str | bytes):  # a driver's sql.Composed: unhashable, its repr no SQL
        sql = _composed_sql(sql) or str(sql)
    key = (sql, code.co_filename, site.f_lasti)  # f_lineno costs ~300 ns on 3.11: only on a miss
    message = _messages.get(key)
    if message is None:
        line = site.f_lineno
        name = getattr(code, "co_qualname", code.co_name)
        message = f"{normalize_sql(sql)}\n@ {code.co_filename}:{line} in {name}"
        if len(_messages) >= _MESSAGES_MAX:
            _messages.clear()
        _messages[key] = message
    return message


# ---------------------------------------------------------------------------------------
# recording one query


class _State(threading.local):
    inside = False


_state = _State()
#: The installed source, None when none is (the wrappers then just call through).
_source: DbapiSource | None = None
_record = backend.record
_is_enabled = backend.is_enabled
_task_id = current_task_id.get
_getframe = sys._getframe


def _recorded(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original(self, sql, ...)`` (an execute method) recording each call: a ``db``
    region around it and, right after the region's begin, the ``db`` log."""

    @functools.wraps(original)
    def execute(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
        source = _source
        state = _state
        if source is None or state.inside or not _is_enabled():
            return original(self, sql, *args, **kwargs)
        task = _begin(source, sql, _getframe(1))
        if task is None:
            return original(self, sql, *args, **kwargs)
        state.inside = True
        try:
            return original(self, sql, *args, **kwargs)
        finally:
            state.inside = False
            _end(source, task)

    execute.__pyflight_original__ = original  # type: ignore[attr-defined]
    return execute


def _begin(source: DbapiSource, sql: Any, caller: FrameType) -> int | None:
    """Records a query's begin and its log; its task, or None if recording failed (the
    source then disables itself)."""
    try:
        task: int = _task_id()
        message = _message(sql, caller)
        _record(_K_BEGIN, task, DB_REGION)
        _record(_K_LOG, task, DB_CATEGORY, message)
        return task
    except Exception as exc:
        source.failed(exc)
        return None


def _end(source: DbapiSource, task: int) -> None:
    try:
        _record(_K_END, task, DB_REGION)
    except Exception as exc:
        source.failed(exc)


#: inside a recorded async query (asyncio tasks share their thread: a thread-local
#: would let one task's query hide another's)
_inside_async: contextvars.ContextVar[bool] = contextvars.ContextVar("pyflight_db_query", default=False)
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE (inspect itself is not imported where recorded)


def _recorded_async(original: Callable[..., Any]) -> Callable[..., Any]:
    """``_recorded`` for an ``async def`` execute method (psycopg's ``AsyncCursor``): the
    region spans the awaited query. Regions pair per thread and ``pyflight.task``, so
    concurrent queries of tasks outside any ``pyflight.task`` on one event loop pair in
    the order they end (counts and sites stay right, durations may be swapped)."""

    @functools.wraps(original)
    async def execute(self: Any, sql: Any, *args: Any, **kwargs: Any) -> Any:
        source = _source
        if source is None or _inside_async.get() or not _is_enabled():
            return await original(self, sql, *args, **kwargs)
        task = _begin(source, sql, _getframe(1))  # the awaiting frame: the caller's chain
        if task is None:
            return await original(self, sql, *args, **kwargs)
        token = _inside_async.set(True)
        try:
            return await original(self, sql, *args, **kwargs)
        finally:
            _inside_async.reset(token)
            _end(source, task)

    execute.__pyflight_original__ = original  # type: ignore[attr-defined]
    return execute


def _recorded_as(original: Callable[..., Any], statement: str) -> Callable[..., Any]:
    """``original(self)`` (``commit``, ``rollback``) recorded as the query ``statement``:
    where a write transaction ends tells who held a database's write lock until when."""
    recorded = _recorded(lambda self, _sql: original(self))

    @functools.wraps(original)
    def method(self: Any) -> Any:
        return recorded(self, statement)

    return method


_QUERY_METHODS = ("execute", "executemany")


def record_cursor_class(cls: type, methods: Sequence[str] = _QUERY_METHODS) -> None:
    """Record the queries of a DB-API cursor class written in Python (its ``execute`` and
    ``executemany``; ``async def`` ones too, as psycopg's ``AsyncCursor``). Idempotent;
    the class keeps working (calling through) once the source is removed."""
    for name in methods:
        method = cls.__dict__.get(name)
        if method is None or getattr(method, "__pyflight_original__", None) is not None:
            continue
        is_async = getattr(getattr(method, "__code__", None), "co_flags", 0) & _CO_COROUTINE
        setattr(cls, name, _recorded_async(method) if is_async else _recorded(method))


# ---------------------------------------------------------------------------------------
# sqlite3 (imported by the program, not by pyflight: importing it costs milliseconds)

_sqlite: dict[str, Any] = {}


def _plain_cursor_call(sqlite3: ModuleType, method: str) -> Callable[..., Any]:
    """``connection.<method>(...)`` as sqlite3 does it: a plain cursor (with the
    connection's row factory), its ``<method>(...)``; the cursor is returned."""
    new_cursor = sqlite3.Connection.cursor
    run = getattr(sqlite3.Cursor, method)

    def call(connection: Any, *args: Any, **kwargs: Any) -> Any:
        cursor = new_cursor(connection)
        run(cursor, *args, **kwargs)
        return cursor

    call.__name__ = call.__qualname__ = method
    return call


def _sqlite_connect_wrapper(sqlite3: ModuleType) -> Callable[..., Any]:
    """The recording ``connect`` for this ``sqlite3`` module (its classes made once)."""
    made = _sqlite.get("connect")
    if made is not None:
        return made  # type: ignore[no-any-return]

    class RecordedCursor(sqlite3.Cursor):  # type: ignore[name-defined,misc]
        """A ``sqlite3.Cursor`` whose statements are recorded."""

        execute = _recorded(sqlite3.Cursor.execute)
        executemany = _recorded(sqlite3.Cursor.executemany)
        executescript = _recorded(sqlite3.Cursor.executescript)

    _exit = _recorded(lambda self, _sql, *args: sqlite3.Connection.__exit__(self, *args))
    _close = _recorded(lambda self, _sql: sqlite3.Connection.close(self))

    class RecordedConnection(sqlite3.Connection):  # type: ignore[name-defined,misc]
        """A ``sqlite3.Connection`` whose statements (its own and its cursors') are recorded."""

        # what Connection.execute does, without its call to our cursor() and a second wrapper
        execute = _recorded(_plain_cursor_call(sqlite3, "execute"))
        executemany = _recorded(_plain_cursor_call(sqlite3, "executemany"))
        executescript = _recorded(_plain_cursor_call(sqlite3, "executescript"))
        commit = _recorded_as(sqlite3.Connection.commit, "COMMIT")
        rollback = _recorded_as(sqlite3.Connection.rollback, "ROLLBACK")

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any:
            """``with connection:`` commits (or rolls back) in C: recorded as such."""
            return _exit(self, "COMMIT" if exc_type is None else "ROLLBACK", exc_type, exc, tb)

        def close(self) -> None:
            """Closing drops an open transaction: recorded as its ROLLBACK."""
            if self.in_transaction:
                _close(self, "ROLLBACK")
            else:
                sqlite3.Connection.close(self)

        def cursor(self, factory: Any = None) -> Any:
            return super().cursor(RecordedCursor if factory is None else factory)

    RecordedCursor.__qualname__ = RecordedCursor.__name__
    RecordedConnection.__qualname__ = RecordedConnection.__name__
    original = sqlite3.dbapi2.connect

    @functools.wraps(original)
    def connect(*args: Any, **kwargs: Any) -> Any:
        if _source is not None and "factory" not in kwargs and len(args) < 5:
            kwargs["factory"] = RecordedConnection
        return original(*args, **kwargs)

    _sqlite.update(connect=connect, original=original)
    return connect


def _patch_sqlite(sqlite3: ModuleType) -> None:
    connect = _sqlite_connect_wrapper(sqlite3)
    setattr(sqlite3, "connect", connect)  # noqa: B010 - a module attribute mypy cannot see
    setattr(sqlite3.dbapi2, "connect", connect)  # noqa: B010


def _unpatch_sqlite() -> None:
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is None or "connect" not in _sqlite:
        return
    for module in (sqlite3, getattr(sqlite3, "dbapi2", None)):
        if module is not None and getattr(module, "connect", None) is _sqlite["connect"]:
            setattr(module, "connect", _sqlite["original"])  # noqa: B010


# ---------------------------------------------------------------------------------------
# psycopg2 (its cursor is a C type: recorded through a subclass handed to its connections)


def _patch_psycopg2(psycopg2: ModuleType) -> None:
    """``psycopg2.connect`` gives connections made without a ``cursor_factory`` a recorded
    subclass of its C cursor (the connection's default for every ``cursor()``). Idempotent;
    the wrapper calls straight through once the source is removed."""
    connect = getattr(psycopg2, "connect", None)
    base: Any = getattr(getattr(psycopg2, "extensions", None), "cursor", None)
    if not callable(connect) or getattr(connect, "__pyflight_original__", None) is not None:
        return
    if not isinstance(base, type):
        return

    class RecordedCursor(base):  # type: ignore[misc]
        """A ``psycopg2.extensions.cursor`` whose statements are recorded."""

        execute = _recorded(base.execute)
        executemany = _recorded(base.executemany)

    @functools.wraps(connect)
    def recorded_connect(*args: Any, **kwargs: Any) -> Any:
        # connect(dsn, connection_factory, cursor_factory, **kwargs): a factory given by
        # the program (by keyword or third positional) is its own choice, left alone
        if _source is not None and len(args) < 3 and kwargs.get("cursor_factory") is None:
            kwargs["cursor_factory"] = RecordedCursor
        return connect(*args, **kwargs)

    recorded_connect.__pyflight_original__ = connect  # type: ignore[attr-defined]
    psycopg2.connect = recorded_connect  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------
# modules patched when imported (sqlite3, Django)

#: module name -> cursor classes in it to record
_CURSOR_CLASSES = {
    "django.db.backends.utils": ("CursorWrapper",),
    # psycopg 3's (PostgreSQL) Python cursor; its Connection.execute goes through it, and
    # so do ClientCursor and Django's postgresql backend. (psycopg2's cursor is a C type:
    # record_cursor_class cannot patch it; Django's CursorWrapper still records its queries.)
    "psycopg.cursor": ("Cursor",),
    "psycopg.cursor_async": ("AsyncCursor",),
    # psycopg2's cursor classes written in Python (each defines its own execute)
    "psycopg2.extras": ("DictCursor", "RealDictCursor", "NamedTupleCursor", "LoggingCursor"),
}
_WATCHED = frozenset({"sqlite3", "psycopg2", *_CURSOR_CLASSES})


def _patch_module(module: ModuleType) -> None:
    if module.__name__ == "sqlite3":
        _patch_sqlite(module)
        return
    if module.__name__ == "psycopg2":
        _patch_psycopg2(module)
        return
    for class_name in _CURSOR_CLASSES.get(module.__name__, ()):
        cls = getattr(module, class_name, None)
        if isinstance(cls, type):
            record_cursor_class(cls)


class _PatchOnImport:
    """Patches a watched module right after it is first executed (a duck-typed finder:
    see ``_import_watch._ChainedLoader``)."""

    def find_spec(
        self, fullname: str, path: Any, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = None if spec is None else spec.loader
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return None
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            if _source is None:
                return
            try:
                _patch_module(module)
            except Exception as exc:
                _source.failed(exc)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_finder = _PatchOnImport()


@register
class DbapiSource(Source):
    """Queries (sqlite3, Django, DB-API cursors) as ``db`` regions with the statement and the user's line."""

    name = "dbapi"
    default_enabled = True

    def _install(self) -> None:
        global _source
        if self.options:
            raise ValueError(f"unknown option(s) {sorted(self.options)}")
        _source = self
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)
        for name in _WATCHED:
            module = sys.modules.get(name)
            if module is not None:
                _patch_module(module)

    def _uninstall(self) -> None:
        """Hooks go inert: patched cursor classes and connections made meanwhile call through."""
        global _source
        if _source is self:
            _source = None
        _unpatch_sqlite()
        try:
            sys.meta_path.remove(_finder)
        except ValueError:
            pass
