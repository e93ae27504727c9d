"""The store subcommands of ``kapacitor-oncall-bridge``: replay, move, drop, incidents.

Each prints what it did in plain words. On SQLite ``move``/``drop`` refuse while a bridge
serves; on PostgreSQL they run beside the replicas (:mod:`bridge.pg.retarget`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import time
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Protocol, TypeVar

from .config import Config
from .ledger import Incident, open_incidents
from .store import open_store
from .store_ops import Replayed, drop_target, exclusive_lock, move_target, replay

__all__ = ["add_parsers", "drop", "incidents", "move", "run_replay"]

T = TypeVar("T")

EXIT_OK = 0
EXIT_FAILED = 1


class Out(Protocol):
    def line(self, text: str = "") -> None: ...


Add = Callable[..., argparse.ArgumentParser]


def add_parsers(add: Add) -> None:
    """Register move, drop and incidents (``add(name, help)`` returns a subparser with --config)."""
    move_p = add(
        "move", "Give every queued row, dead letter and incident of a renamed target to its new name.", True
    )
    move_p.add_argument("--from", dest="old", required=True, help="the old target name")
    move_p.add_argument("--to", dest="new", required=True, help="the new target name (should be configured)")
    drop_p = add("drop", "Delete every row, dead letter and incident of a removed target.", True)
    drop_p.add_argument("--target", "-t", required=True)
    inc = add("incidents", "List the incidents each platform believes are open (the incident ledger).")
    inc.add_argument("--target", "-t")
    inc.add_argument("--json", action="store_true", help="machine-readable output")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _states(counts: Dict[str, int]) -> str:
    if not counts:
        return "no rows"
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def run_replay(args: argparse.Namespace, config: Config, out: Out, err: Out) -> int:
    """Order-safe replay; ``--force`` re-sends superseded dead letters and says what that does."""
    if args.target and args.target not in config.targets:
        err.line(f"warning: target {args.target!r} is not configured; its rows will not be delivered")
    from .pg import admin

    result = _on_store(config, pg=lambda c: admin.replay(c, args.target, args.alert_id, force=args.force),
                       sqlite=lambda c: replay(c, args.target, args.alert_id, force=args.force))
    _print_replay(result, out, err)
    return EXIT_OK


def _print_replay(result: Replayed, out: Out, err: Out) -> None:
    out.line(
        f"replayed {result.count} dead letter(s); a running bridge picks them up within a second"
    )
    for s in result.superseded:
        out.line(
            f"superseded #{s.row.seq} {s.row.target} id={s.row.key!r} level={s.row.level}: not re-sent, "
            f"a later event (#{s.by_seq}, {s.by_level}, {s.by_state}) carries the newer state"
        )
    if result.superseded:
        out.line(f"{len(result.superseded)} superseded dead letter(s) left dead; --force sends them anyway")
    for f in result.forced:
        err.line(f"forced #{f.row.seq} {f.row.target} id={f.row.key!r} level={f.row.level} as #{f.new_seq}: {f.effect}")


def _on_store(config: Config, *, pg: Callable[[Any], T], sqlite: Callable[[sqlite3.Connection], T],
              exclusive: bool = False) -> T:
    """Run a command on the configured store, on a connection of its own: ``pg(connection)``
    beside serving replicas, or ``sqlite(connection)`` on the file (``exclusive``: only while
    no bridge serves from it)."""
    if config.store.backend == "postgres":
        from .pg import admin

        assert config.store.dsn is not None
        conn = admin.open_admin(config.store.dsn)
        try:
            return pg(conn)
        finally:
            conn.close()
    with exclusive_lock(config.store.path) if exclusive else contextlib.nullcontext():
        db = open_store(config.store.path, create=False)
        try:
            return sqlite(db)
        finally:
            db.close()


def move(args: argparse.Namespace, config: Config, out: Out, err: Out) -> int:
    """``move --from OLD --to NEW``."""
    if args.new not in config.targets:
        err.line(f"warning: target {args.new!r} is not configured; its rows will not be delivered")
    from .pg import retarget

    moved = _on_store(config, pg=lambda c: retarget.move_target(c, args.old, args.new),
                      sqlite=lambda c: move_target(c, args.old, args.new), exclusive=True)
    if not moved.rows and not moved.incidents and not moved.timers:
        out.line(f"nothing to move: the store has no rows for target {args.old!r}")
        return EXIT_OK
    out.line(
        f"moved {sum(moved.rows.values())} row(s) from {args.old!r} to {args.new!r} ({_states(moved.rows)}), "
        f"{moved.incidents} ledger entr{'y' if moved.incidents == 1 else 'ies'}, "
        f"{moved.timers} auto-resolve timer(s)"
    )
    return EXIT_OK


def drop(args: argparse.Namespace, config: Config, out: Out, err: Out) -> int:
    """``drop --target OLD``."""
    if args.target in config.targets:
        err.line(
            f"warning: target {args.target!r} is configured: its queued alerts and dead letters are being "
            "deleted, not delivered"
        )
    from .pg import retarget

    dropped = _on_store(config, pg=lambda c: retarget.drop_target(c, args.target),
                        sqlite=lambda c: drop_target(c, args.target), exclusive=True)
    if not dropped.rows and not dropped.incidents and not dropped.timers:
        out.line(f"nothing to drop: the store has no rows for target {args.target!r}")
        return EXIT_OK
    out.line(
        f"dropped {sum(dropped.rows.values())} row(s) of {args.target!r} ({_states(dropped.rows)}), "
        f"{dropped.incidents} open incident(s) forgotten (the platform may still show them), "
        f"{dropped.timers} auto-resolve timer(s)"
    )
    return EXIT_OK


def _incident_json(i: Incident, now: float) -> Dict[str, Any]:
    return {
        "target": i.target,
        "id": i.key,
        "level": i.level,
        "fired_levels": list(i.fired_levels),
        "opened_at": _iso(i.opened_at),
        "age_seconds": round(max(0.0, now - i.opened_at), 3),
        "told_at": _iso(i.told_at),
        "seq": i.seq,
    }


def incidents(args: argparse.Namespace, config: Config, out: Out, err: Out) -> int:
    """``incidents [--target T] [--json]``: open incidents with age and last delivery."""
    from .pg.sql import open_incidents as pg_open_incidents

    found: List[Incident] = _on_store(config, pg=lambda c: pg_open_incidents(c, args.target),
                                      sqlite=lambda c: open_incidents(c, args.target))
    now = time.time()
    if args.json:
        out.line(json.dumps([_incident_json(i, now) for i in found], indent=2))
        return EXIT_OK
    if not found:
        out.line("no open incidents" + (f" for target {args.target!r}" if args.target else ""))
        return EXIT_OK
    for i in found:
        flag = "" if i.target in config.targets else "  (not configured)"
        out.line(
            f"{i.target} id={i.key!r} level={i.level} fired={','.join(i.fired_levels)} "
            f"open {_age(now - i.opened_at)} (since {_iso(i.opened_at)}) "
            f"last told {_iso(i.told_at)} (#{i.seq}){flag}"
        )
    out.line(f"{len(found)} open incident(s)")
    return EXIT_OK
