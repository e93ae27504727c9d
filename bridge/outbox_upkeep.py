"""The writer's upkeep operations: index rebuild, replay, auto-resolve expiries, prune,
the store probe and outage coalescing.

Like :mod:`bridge.outbox_ops` (accepting and finishing), each ``apply`` runs inside
the writer's transaction and ``after`` once it has committed, with the index lock held.
"""

from __future__ import annotations

import heapq
import sqlite3
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .coalesce import keep
from .ledger import CLOSED_KEEP, last_told
from .outbox_index import Key
from .outbox_ops import Done, MakeResolve, _Insert, _Op, log
from .store import Forwarded, Head
from .store_ops import Replayed, replay_rows

if TYPE_CHECKING:
    from .outbox import Outbox

_PRUNE_CHUNK = 5000


class _Rebuild(_Op):
    """Reload the index from the file: at startup, and after another process committed."""

    __slots__ = ("only_if_changed", "recover_inflight")

    def __init__(self, only_if_changed: bool, recover_inflight: bool = False) -> None:
        self.only_if_changed = only_if_changed
        self.recover_inflight = recover_inflight

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> int:
        version = cur.execute("PRAGMA data_version").fetchone()[0]
        if self.only_if_changed and version == box._data_version:
            return -1
        box._data_version = version
        recovered = 0
        if self.recover_inflight:
            recovered = cur.execute("UPDATE outbox SET state = 'pending' WHERE state = 'inflight'").rowcount
        # Everything below reads; holding the index lock keeps claims out while we swap.
        with box._lock:
            heads = [
                Head(*r)
                for r in cur.execute(
                    "SELECT o.target, o.key, o.seq, o.next_attempt_at, o.level, o.received_at FROM outbox o"
                    " WHERE o.seq IN (SELECT MIN(seq) FROM outbox WHERE state = 'pending' GROUP BY target, key)"
                )
            ]
            pending: Dict[str, int] = {}
            dead: Dict[str, int] = {}
            for target, state, count in cur.execute(
                "SELECT target, state, count(*) FROM outbox WHERE state IN ('pending', 'dead') GROUP BY target, state"
            ):
                (pending if state == "pending" else dead)[target] = count
            # Claimed rows whose 'inflight' mark is still queued behind us read as pending here.
            for (target, _key), seq in box._busy.items():
                state_row = cur.execute("SELECT state FROM outbox WHERE seq = ?", (seq,)).fetchone()
                if state_row is not None and state_row[0] == "pending" and pending.get(target, 0) > 0:
                    pending[target] -= 1
            box._pending, box._dead = pending, dead
            box._heads = {}
            box._heaps = {}
            box._parked = {}
            for head in heads:
                key = (head.target, head.key)
                if key in box._held:
                    box._parked[key] = head
                elif key not in box._busy:
                    box._heads[key] = head
            box._ok_heaps = {}
            for head in box._heads.values():
                box._heaps.setdefault(head.target, []).append((head.due, head.seq, head.key))
                if head.level == "OK":
                    box._ok_heaps.setdefault(head.target, []).append((head.due, head.seq, head.key))
            for heap in list(box._heaps.values()) + list(box._ok_heaps.values()):
                heapq.heapify(heap)
            box._coalescible = {}
            for target, key in cur.execute(
                "SELECT target, key FROM outbox WHERE state = 'pending' GROUP BY target, key HAVING count(*) > 1"
            ):
                box._coalescible.setdefault(target, set()).add(key)
            box._forwarded = {
                (t, k): Forwarded(level, received)
                for t, k, level, received in cur.execute(
                    "SELECT target, key, level, received_at FROM last_forwarded"
                )
            }
            box._has_expiries = cur.execute("SELECT 1 FROM expiry LIMIT 1").fetchone() is not None
        return recovered


class _Replay(_Op):
    __slots__ = ("target", "key", "force", "done")

    def __init__(self, target: Optional[str], key: Optional[str], force: bool, done: Optional[Done]) -> None:
        self.target, self.key, self.force, self.done = target, key, force, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> Replayed:
        result = replay_rows(cur, self.target, self.key, box._clock(), force=self.force)
        if result.count:
            _Rebuild(only_if_changed=False).apply(box, cur)
        return result


#: A timer whose resolve could not be made is tried again this much later.
EXPIRY_RETRY_SECONDS = 60.0


class _FireExpiries(_Op):
    """Turn due auto-resolve timers into synthetic OK rows, atomically with deleting them."""

    __slots__ = ("make", "done", "inserted")

    def __init__(self, make: MakeResolve, done: Optional[Done]) -> None:
        self.make, self.done = make, done
        self.inserted: List[_Insert] = []

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> List[Tuple[int, str, str]]:
        now = box._clock()
        self.inserted = []
        due = cur.execute(
            "SELECT target, key, body FROM expiry WHERE due_at <= ? ORDER BY due_at LIMIT 500", (now,)
        ).fetchall()
        fired: List[Tuple[int, str, str]] = []
        for target, key, body in due:
            # One timer that cannot fire (a bug rendering its resolve, a bad row) must not
            # hold back every other auto-resolve: it is put back a minute later, alone.
            cur.execute("SAVEPOINT expiry_one")
            try:
                cur.execute("DELETE FROM expiry WHERE target = ? AND key = ?", (target, key))
                resolved = self.make(target, key, bytes(body), now)
                if resolved is not None:
                    ins = _Insert(target, key, "OK", resolved, now, None, None, synthetic=True)
                    seq = ins.apply(box, cur)
                    self.inserted.append(ins)
                    fired.append((seq, target, key))
                cur.execute("RELEASE expiry_one")
            except Exception as exc:  # noqa: BLE001 - isolate the one timer
                cur.execute("ROLLBACK TO expiry_one")
                cur.execute("RELEASE expiry_one")
                cur.execute(
                    "UPDATE expiry SET due_at = ? WHERE target = ? AND key = ?",
                    (now + EXPIRY_RETRY_SECONDS, target, key),
                )
                box._count_failure("Expiry")
                log.error("outbox.expiry_failed", target=target, id=key, error=f"{type(exc).__name__}: {exc}",
                          retry_in=EXPIRY_RETRY_SECONDS)
        return fired

    def after(self, box: "Outbox", fired: List[Tuple[int, str, str]]) -> None:
        for ins, (seq, _t, _k) in zip(self.inserted, fired):
            ins.after(box, seq)


class _Prune(_Op):
    """Forget old delivered/suppressed rows and stale repeat-suppression entries."""

    __slots__ = ("keep", "forget_before", "done")

    def __init__(self, keep: int, forget_before: Optional[float], done: Optional[Done]) -> None:
        self.keep, self.forget_before, self.done = keep, forget_before, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> Tuple[int, List[Key]]:
        removed = 0
        for state in ("delivered", "suppressed"):
            removed += cur.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE state = ?"
                " ORDER BY seq DESC LIMIT ? OFFSET ?)",
                (state, _PRUNE_CHUNK, self.keep),
            ).rowcount
        # Closed incidents past CLOSED_KEEP whose id has no dead letter left (see bridge.ledger).
        cur.execute(
            "DELETE FROM ledger WHERE rowid IN (SELECT l.rowid FROM ledger l WHERE l.open = 0 AND l.told_at < ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.state = 'dead' AND o.target = l.target AND o.key = l.key)"
            " LIMIT ?)",
            (box._clock() - CLOSED_KEEP, _PRUNE_CHUNK),
        )
        forgotten: List[Key] = []
        if self.forget_before is not None:
            forgotten = [
                (t, k)
                for t, k in cur.execute(
                    "SELECT target, key FROM last_forwarded WHERE received_at < ? LIMIT ?",
                    (self.forget_before, _PRUNE_CHUNK),
                )
            ]
            cur.executemany("DELETE FROM last_forwarded WHERE target = ? AND key = ?", forgotten)
        return removed, forgotten

    def after(self, box: "Outbox", result: Tuple[int, List[Key]]) -> None:
        for key in result[1]:
            box._forwarded.pop(key, None)


class _Probe(_Op):
    __slots__ = ("done",)

    def __init__(self, done: Optional[Done]) -> None:
        self.done = done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> bool:
        cur.execute(
            "INSERT INTO meta (name, value) VALUES ('probe', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (repr(box._clock()),),
        )
        return True


class _Coalesce(_Op):
    """Mark the pending events of some ids ``superseded`` per :func:`bridge.coalesce.keep`.

    The first kept row inherits the old head's retry schedule (attempts, due time), so
    a platform that is still down sees the same backoff, not a fresh burst.
    """

    __slots__ = ("target", "keys", "mode", "done")

    def __init__(self, target: str, keys: List[str], mode: str, done: Optional[Done]) -> None:
        self.target, self.keys, self.mode, self.done = target, keys, mode, done

    def apply(self, box: "Outbox", cur: sqlite3.Cursor) -> List[Tuple[str, Optional[Head], int]]:
        now = box._clock()
        out: List[Tuple[str, Optional[Head], int]] = []
        for key in self.keys:
            rows = cur.execute(
                "SELECT seq, level, attempts, next_attempt_at, last_error, last_status, received_at FROM outbox"
                " WHERE target = ? AND key = ? AND state = 'pending' ORDER BY seq",
                (self.target, key),
            ).fetchall()
            told = last_told(cur.connection, self.target, key)
            kept = set(keep([(r[0], r[1]) for r in rows], None if told is None else told.level, self.mode))
            gone = [r[0] for r in rows if r[0] not in kept]
            if not gone:
                out.append((key, None, 0))
                continue
            latest = rows[-1][0]
            cur.executemany(
                "UPDATE outbox SET state = 'superseded', done_at = ?, last_error = ? WHERE seq = ? AND state = 'pending'",
                [(now, f"superseded by #{latest} (coalesced)", seq) for seq in gone],
            )
            first = next(r for r in rows if r[0] in kept)
            old = rows[0]
            due = first[3]
            if old[0] != first[0]:
                due = max(first[3], old[3])
                cur.execute(
                    "UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = COALESCE(?, last_error),"
                    " last_status = COALESCE(?, last_status) WHERE seq = ?",
                    (max(first[2], old[2]), due, old[4], old[5], first[0]),
                )
            out.append((key, Head(self.target, key, first[0], due, first[1], first[6]), len(gone)))
        return out

    def after(self, box: "Outbox", result: List[Tuple[str, Optional[Head], int]]) -> None:
        for key, head, gone in result:
            k = (self.target, key)
            box._coalescible.get(self.target, set()).discard(key)
            if head is None:
                continue
            box._bump(box._pending, self.target, -gone)
            if k in box._busy:
                continue
            if k in box._held:
                box._parked[k] = head
                continue
            box._heads[k] = head
            box._push(head)
