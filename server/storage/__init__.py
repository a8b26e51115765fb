"""Durable state: resources (conversations, reasoning sessions) and their event logs.

The event log is the spine. Every step of a run commits its new resource state and its events in one
transaction (`Store.commit`), sequences per resource from 1 without gaps, `(resource_id, sequence)`
unique; live followers are woken only after the commit (`EventHub`), and a follower always reads what
it sends from the store: subscribe first, replay after the last sequence it saw, then wait for the next
commit — nothing is lost between replay and live, nothing is sent twice.

`Store` is the interface; `SqliteStore` (WAL, aiosqlite) the default, `PostgresStore` (asyncpg,
`server/storage/postgres.py`) for replicas sharing one database; `open_store` picks one from the
configured `database`. The hub's wake-ups are still in-process (LISTEN/NOTIFY would carry them across
replicas).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.settings import is_postgres_url
from server.storage.base import KeyRow, KeyStore, Lease, Store, Stored
from server.storage.events import EventHub, follow
from server.storage.sqlite import SqliteStore

if TYPE_CHECKING:
    from server.storage.postgres import PostgresStore


def open_store(database: str) -> SqliteStore | PostgresStore:
    """The store `database` names (`[server] database`): a postgresql:// URL, or an SQLite path.

    Not yet opened (`await store.open()`). asyncpg is imported only for a PostgreSQL database.
    """
    if is_postgres_url(database):
        from server.storage.postgres import PostgresStore

        return PostgresStore(database)
    return SqliteStore(database)


__all__ = [
    "EventHub",
    "KeyRow",
    "KeyStore",
    "Lease",
    "SqliteStore",
    "Store",
    "Stored",
    "follow",
    "open_store",
]
