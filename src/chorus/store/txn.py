"""What a transaction accumulates for its commit: the change feed's changes (written at the commit, with it) and
the metrics' counts (counted at the commit). One mechanism for both, so that they follow the same rules:

- a savepoint rolled back drops what was added inside it (a failed claim handled again one person at a time, a
  message that did not exist): its changes are not written, its counts not counted;
- a rollback drops everything, and so does a connection going back to the pool without either (``record`` called,
  then closed);
- at the commit, one listener gives each buffer's items to its owner's ``commit`` function, in the buffers' ``order``
  (the feed writes its changes first, the metrics count last: a write that fails the commit counts nothing).

Kept in ``conn.info``, the DBAPI connection's own dict, which every ``Connection`` over it shares and the pool
keeps: hence the clearing at check-in.

Savepoints nest strictly (each is released or rolled back before the one that encloses it), so their marks are a
stack. Not a map by name: SQLAlchemy fires the "savepoint" event before it names the savepoint (the name given is
None), so marks by name were never found (the feed once wrote changes of a savepoint rolled back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

_BUFFERS: list[Buffer] = []


class Buffer:
    """One owner's list per transaction. Create it at import (module level): the listeners know every buffer.
    ``commit(conn, items)`` runs in the transaction's "commit" event with what it kept (nothing: not called)."""

    def __init__(self, key: str, commit: Callable[[Connection, list], None], order: int):
        self.key, self.commit, self.order = key, commit, order
        _BUFFERS.append(self)
        _BUFFERS.sort(key=lambda b: b.order)

    def _of(self, conn: Connection) -> dict:
        return conn.info.setdefault(self.key, {"items": [], "marks": []})

    def add(self, conn: Connection, items: Iterable) -> None:
        self._of(conn)["items"].extend(items)

    def take(self, conn: Connection) -> list:
        """Everything the transaction added (and kept), emptying the buffer: for the owner's commit listener."""
        buf = conn.info.pop(self.key, None)
        return buf["items"] if buf else []

    def drop(self, conn: Connection, unwanted: Callable[[object], bool]) -> None:
        """Forget the items ``unwanted`` says so (an erasure forgets the changes of the people it erases), keeping
        each savepoint's mark on the items kept before it."""
        buf = conn.info.get(self.key)
        if buf:
            keep = [not unwanted(x) for x in buf["items"]]
            buf["marks"] = [sum(keep[:m]) for m in buf["marks"]]
            buf["items"] = [x for x, k in zip(buf["items"], keep, strict=True) if k]


def _committed(conn: Connection) -> None:
    for b in _BUFFERS:
        items = b.take(conn)
        if items:
            b.commit(conn, items)


# A connection lost mid-transaction is invalidated: reading its info then raises PendingRollbackError, which would
# replace the disconnect itself (and ``db.transient`` would no longer see a transient failure; review). Its info is
# new when it reconnects, so there is nothing to drop.
def _savepoint(conn: Connection, name: str | None) -> None:
    if conn.invalidated:
        return
    for b in _BUFFERS:
        buf = b._of(conn)
        buf["marks"].append(len(buf["items"]))


def _rollback_savepoint(conn: Connection, name: str, context) -> None:
    if conn.invalidated:
        return
    for b in _BUFFERS:
        buf = conn.info.get(b.key)
        if buf and buf["marks"]:
            del buf["items"][buf["marks"].pop() :]


def _release_savepoint(conn: Connection, name: str, context) -> None:
    if conn.invalidated:
        return
    for b in _BUFFERS:
        buf = conn.info.get(b.key)
        if buf and buf["marks"]:
            buf["marks"].pop()


def _rollback(conn: Connection) -> None:
    if conn.invalidated:
        return
    for b in _BUFFERS:
        conn.info.pop(b.key, None)


def _checkin(dbapi_conn, rec) -> None:
    if rec is not None:
        for b in _BUFFERS:
            rec.info.pop(b.key, None)


def _listen() -> None:
    """Once, at import, for every engine (class-level listeners: adding listeners to an engine in use is not
    thread-safe)."""
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    sa.event.listen(Engine, "commit", _committed)
    sa.event.listen(Engine, "rollback", _rollback)
    sa.event.listen(Pool, "checkin", _checkin)
    sa.event.listen(Engine, "savepoint", _savepoint)
    sa.event.listen(Engine, "rollback_savepoint", _rollback_savepoint)
    sa.event.listen(Engine, "release_savepoint", _release_savepoint)


_listen()
