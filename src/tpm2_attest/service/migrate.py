"""Schema migrations (Alembic, shipped in ``migrations/``): upgrade a database, or check it.

``serve`` does not change an existing schema on its own: it creates the schema in an empty
database, and refuses to start on one that is behind (:class:`SchemaBehind`) until an operator
runs ``tpm2-attest db upgrade`` (after a backup, with the old release stopped). A database made
by a release before migrations (tables, no ``alembic_version``) is *adopted* by ``upgrade``: it
is stamped at revision 0001 (the schema of those releases) and upgraded from there.

On PostgreSQL the check-and-create and every upgrade run under an advisory lock, on SQLite in
one transaction holding the write lock (``BEGIN IMMEDIATE``; Alembic runs SQLite DDL outside
transactions otherwise), so several processes starting at once on an empty database create it
once and none of them sees it half made.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Connection, Engine, inspect, text

LOCK_ID: Final = 0x7470_6D32_6174_7473 & 0x7FFF_FFFF_FFFF_FFFF
"""The PostgreSQL advisory lock key migrations hold ("tpm2atts")."""


class SchemaError(RuntimeError):
    """The database's schema is not one this release can run on."""


class SchemaBehind(SchemaError):
    """The schema is older than this release's: run ``tpm2-attest db upgrade``."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: its revision (None: empty or pre-migration), the head of this
    release, and whether it holds tables of a release before migrations."""

    current: str | None
    head: str
    legacy: bool

    @property
    def empty(self) -> bool:
        return self.current is None and not self.legacy

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    @property
    def newer(self) -> bool:
        """At a revision this release does not know: a newer release made it."""
        return self.current is not None and not self.up_to_date and not _is_older(self.current)


def _config(connection: Connection | None = None) -> object:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "tpm2_attest.service:migrations")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head() -> str:
    """The newest revision this release ships."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())  # type: ignore[arg-type]
    rev = script.get_current_head()
    assert rev is not None
    return rev


def _state(connection: Connection) -> SchemaState:
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    tables = set(inspect(connection).get_table_names())
    return SchemaState(current, head(), legacy=current is None and "devices" in tables)


def state(engine: Engine) -> SchemaState:
    """The schema state of the database behind ``engine``."""
    with engine.connect() as conn:
        return _state(conn)


def _begin_exclusive(conn: Connection) -> None:
    """On SQLite: open a transaction holding the write lock, which the schema changes then run
    in (other writers wait for it, readers see the schema before or after, never between)."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection holding the migration lock (PostgreSQL advisory lock; on SQLite a
    transaction holding the write lock, committed by the caller)."""
    with engine.connect() as conn:
        postgres = engine.dialect.name == "postgresql"
        if engine.dialect.name == "sqlite":  # table copies in batch mode must not trip foreign keys
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
            _begin_exclusive(conn)
        if postgres:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_ID})
            conn.commit()
        try:
            yield conn
        finally:
            if engine.dialect.name == "sqlite":
                conn.rollback()
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                conn.commit()
            if postgres:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_ID})
                conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade the database to ``revision`` (adopting a pre-migration one); returns the
    revisions before and after."""
    from alembic import command

    with _locked(engine) as conn:
        before = _state(conn)
        if before.newer:
            raise _newer_error(before)
        if before.legacy:
            _adopt_legacy(conn)
        command.upgrade(_config(conn), revision)  # type: ignore[arg-type]
        conn.commit()
        return before.current, _state(conn).current or ""


def _adopt_legacy(conn: Connection) -> None:
    """Stamp a database made by ``create_all`` of a release before migrations at 0001, after
    giving it the ``ek_key_id`` column that releases before that column lacked."""
    from alembic import command

    columns = {c["name"] for c in inspect(conn).get_columns("devices")}
    if "ek_key_id" not in columns:
        blob = "BYTEA" if conn.dialect.name == "postgresql" else "BLOB"
        conn.execute(text(f"ALTER TABLE devices ADD COLUMN ek_key_id {blob}"))
        conn.execute(text("CREATE UNIQUE INDEX ux_devices_active_ek_key ON devices (ek_key_id) "
                          "WHERE revoked_at IS NULL"))
    command.stamp(_config(conn), "0001")  # type: ignore[arg-type]
    conn.commit()
    _begin_exclusive(conn)


def ensure(engine: Engine) -> SchemaState:
    """What ``serve`` does at start: create the schema in an empty database; raise
    :class:`SchemaBehind` for an older schema, :class:`SchemaError` for an unknown one.

    Anything but an up-to-date schema is looked at again under the migration lock: the state
    is two reads (the version table, the tables), and a process creating the schema between
    them would make an empty database look like one of a release before migrations."""
    from alembic import command

    st = state(engine)
    if st.up_to_date:
        return st
    with _locked(engine) as conn:
        st = _state(conn)
        if st.empty:
            command.upgrade(_config(conn), "head")  # type: ignore[arg-type]
            conn.commit()
            st = _state(conn)
    if st.up_to_date:
        return st
    if st.legacy or (st.current is not None and _is_older(st.current)):
        raise SchemaBehind(
            f"the database schema is at {st.current or 'a release before migrations'}, this release "
            f"needs {st.head}: back it up, then run 'tpm2-attest db upgrade --db URL'")
    raise _newer_error(st)


def _newer_error(st: SchemaState) -> SchemaError:
    return SchemaError(f"the database schema is at revision {st.current}, which this release does "
                       f"not know (newest: {st.head}): a newer release made it; run that release "
                       "(downgrades are not supported)")


def _is_older(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_config())  # type: ignore[arg-type]
    try:
        return any(r.revision == revision for r in script.walk_revisions())
    except Exception:  # pragma: no cover - a broken script directory
        return False


__all__ = ["SchemaBehind", "SchemaError", "SchemaState", "ensure", "head", "state", "upgrade"]
