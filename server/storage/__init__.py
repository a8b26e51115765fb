"""Durable state: resources (conversations, reasoning sessions) and their event logs.

The event log is the spine. Every step of a run commits its new resource state and its events in one
transaction (`Store.commit`), sequences per resource from 1 without gaps, `(resource_id, sequence)`
unique; live followers are woken only after the commit (`EventHub`), and a follower always reads what
it sends from the store: subscribe first, replay after the last sequence it saw, then wait for the next
commit — nothing is lost between replay and live, nothing is sent twice.

`Store` is the interface; `SqliteStore` (WAL, aiosqlite) the default. A PostgreSQL store for several
replicas would implement the same methods, with the hub's wake-ups carried by LISTEN/NOTIFY.
"""

from server.storage.base import KeyRow, KeyStore, Lease, Store, Stored
from server.storage.events import EventHub, follow
from server.storage.sqlite import SqliteStore

__all__ = ["EventHub", "KeyRow", "KeyStore", "Lease", "SqliteStore", "Store", "Stored", "follow"]
