"""The one place that chooses the SQLite binding for the RAG store.

The index needs two extensions: FTS5 (compiled into SQLite) and sqlite-vec (a loadable extension).
Python's own `sqlite3` is sometimes built without extension loading (it is on Debian's and many
distributions' builds of CPython), so we take the first binding that can do both, in this order:
the standard library, `pysqlite3` (pysqlite3-binary), `sqlean` (sqlean.py). All three speak DB-API 2.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from edgellm.rag.errors import IndexLockedError, RagError

_CANDIDATES = ("sqlite3", "pysqlite3.dbapi2", "sqlean")
_INSTALL_HINT = "pip install 'edgellm[rag]' (it brings sqlean.py and sqlite-vec)"


def _usable(module: ModuleType) -> str | None:
    """None if `module` can load sqlite-vec and has FTS5, else why not."""
    import sqlite_vec

    conn = module.connect(":memory:")
    try:
        if not hasattr(conn, "enable_load_extension"):
            return "built without extension loading"
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        if not conn.execute("SELECT sqlite_compileoption_used('ENABLE_FTS5')").fetchone()[0]:
            return "built without FTS5"
        return None
    except Exception as e:  # noqa: BLE001 (any binding-specific failure means: not this one)
        return f"cannot load sqlite-vec ({e})"
    finally:
        conn.close()


@functools.lru_cache(maxsize=1)
def binding() -> ModuleType:
    """The DB-API module the store uses (cached). Raises RagError naming what is missing."""
    try:
        importlib.import_module("sqlite_vec")
    except ImportError:
        raise RagError(f"the RAG index needs the sqlite-vec extension: {_INSTALL_HINT}") from None
    reasons = []
    for name in _CANDIDATES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            reasons.append(f"{name}: not installed")
            continue
        why = _usable(module)
        if why is None:
            return module
        reasons.append(f"{name}: {why}")
    raise RagError("no SQLite binding here can load sqlite-vec with FTS5 (" + "; ".join(reasons) + "): "
                   + _INSTALL_HINT)


def connect(path: Path, *, busy_timeout_s: float = 5.0) -> Any:
    """An autocommit connection (transactions are explicit BEGIN/COMMIT) with sqlite-vec loaded,
    WAL journaling and foreign keys on. Raises RagError for a file that is not a database and
    IndexLockedError when another writer holds it past the timeout."""
    import sqlite_vec

    module = binding()
    try:
        conn = module.connect(str(path), timeout=busy_timeout_s, isolation_level=None,
                              check_same_thread=False)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute("PRAGMA foreign_keys = ON")
        if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
    except module.Error as e:
        raise database_error(path, e) from None
    return conn


def database_error(path: Path, e: Exception) -> RagError:
    """One precise message for a binding's error, naming the index file."""
    text = str(e)
    if "locked" in text or "busy" in text:
        return IndexLockedError(f"{path}: the index is locked by another process (another ingest running?); "
                                "try again when it has finished")
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return RagError(f"{path}: not a usable edgellm index ({text}); delete it and index again")
    return RagError(f"{path}: SQLite error: {text}")
