"""``kapacitor-oncall-bridge``: serve, check-config, config-reference, send-test, queue, replay,
move, drop, incidents, reconcile, silence.

Exit codes: 0 success, 1 the operation failed (a send-test the platform
refused), 2 bad configuration or usage, 3 the store is unusable. Every line
printed goes through the log redactor first, so no configured secret is ever
echoed, even inside a platform's error body.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

from . import __version__, cli_store
from . import log as logmod
from .config import Config, bind_bridge_url, default_config, format_duration, load, parse_listen
from .errors import ConfigError, DeliveryError, StoreError
from .schema import ConfigErrors
from .event import LEVELS

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_OK", "EXIT_STORE", "main"]

EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_STORE = 0, 1, 2, 3
PROG = "kapacitor-oncall-bridge"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Durable bridge from Kapacitor alert events to on-call platforms."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, config_required: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument(
            "--config",
            "-c",
            required=config_required,
            help="TOML config file" + ("" if config_required else " (default: embedded defaults, no targets)"),
        )
        p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
        return p

    serve = add("serve", "Receive alerts and deliver them until SIGTERM.")
    serve.add_argument(
        "--insecure", action="store_true", help="allow a non-loopback listen address without server.token"
    )
    serve.add_argument("--listen", metavar="HOST:PORT", help="listen here instead of [server] listen")
    serve.add_argument("--replica-id", metavar="NAME", help="PostgreSQL store: this replica's id instead of [store] replica_id")
    check = add(
        "check-config",
        "Validate the config (every error in one run), resolve secrets, print the targets (never the secrets).",
        True,
    )
    check.add_argument(
        "--insecure", action="store_true", help="accept a non-loopback listen address without server.token, as serve --insecure"
    )
    ref = sub.add_parser(
        "config-reference",
        help="Print the configuration reference (Markdown), generated from the schema.",
        description="Print the configuration reference (Markdown), generated from the schema; docs/configuration.md is its copy.",
    )
    ref.add_argument("--output", "-o", help="write to this file instead of stdout")
    send = add("send-test", "Send a synthetic event to one target now and print the platform's answer.", True)
    send.add_argument("--target", "-t", required=True)
    send.add_argument("--level", default="CRITICAL", choices=list(LEVELS[::-1]), type=str.upper)
    queue = add("queue", "Show the outbox: rows per target and state, or the dead letters.")
    queue.add_argument("--dead", action="store_true", help="list dead letters with their last error")
    queue.add_argument("--target", "-t")
    queue.add_argument("--json", action="store_true", help="machine-readable output")
    replay = add(
        "replay",
        "Put dead letters back into the queue (a running bridge picks them up); one that a later "
        "event of its id supersedes is reported, not re-sent.",
    )
    replay.add_argument("--target", "-t")
    replay.add_argument("--id", dest="alert_id", help="only this alert id")
    replay.add_argument(
        "--force", action="store_true", help="re-send superseded dead letters too (after the newer events)"
    )
    cli_store.add_parsers(add)
    rec = add(
        "reconcile",
        "Compare Kapacitor's alert state with what the platforms were told; queue the missing "
        "resolves and triggers (a running bridge sends them).",
        True,
    )
    rec.add_argument("--dry-run", action="store_true", help="only print the differences")
    rec.add_argument("--json", action="store_true", help="machine-readable output")
    _silence_parser(sub)
    return parser


def _silence_parser(sub: Any) -> None:
    """``silence add|list|expire``: each takes ``--config`` after the verb, like the others."""
    help_text = "Hold deliveries of matching alerts for a while (maintenance); list or expire silences."
    silence = sub.add_parser("silence", help=help_text, description=help_text)
    config_help = "TOML config file (for [store] path; required)"
    levels = ["debug", "info", "warning", "error"]
    silence.add_argument("--config", "-c", help=config_help)
    silence.add_argument("--log-level", default="warning", choices=levels)
    verbs = silence.add_subparsers(dest="silence_command", required=True, metavar="VERB")

    def verb(name: str, text: str) -> argparse.ArgumentParser:
        # Accepted before or after the verb; SUPPRESS keeps a verb from erasing the parent's value.
        p: argparse.ArgumentParser = verbs.add_parser(name, help=text, description=text)
        p.add_argument("--config", "-c", default=argparse.SUPPRESS, help=config_help)
        p.add_argument("--log-level", default=argparse.SUPPRESS, choices=levels)
        return p

    add = verb(
        "add",
        "Add a silence starting now. Matching alerts are stored and shown but not delivered; when it "
        "ends, each id's latest state goes out (a resolve only if its trigger had been sent).",
    )
    add.add_argument(
        "--match", "-m", action="append", required=True, metavar="MATCHER",
        help="NAME=VALUE, NAME!=VALUE, NAME=~REGEX or NAME!~REGEX; NAME is id, target, level or a tag; "
        "repeat for several (all must match). Example: 'id=~cpu:host=web-.*'",
    )
    add.add_argument("--for", dest="duration", required=True, help="how long: 30m, 2h, 1h30m, 1d (at most 30d)")
    add.add_argument("--comment", required=True, help="why (shown on the status page)")
    add.add_argument("--by", dest="created_by", help="who (default: the login name)")
    listing = verb("list", "List the active silences (--all: also ended and expired ones).")
    listing.add_argument("--all", action="store_true")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    expire = verb("expire", "End a silence now; held alerts are released within a second by a running bridge.")
    expire.add_argument("silence_id", metavar="ID")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the console script."""
    args = _parser().parse_args(argv)
    if args.command == "config-reference":
        return _config_reference(args)
    redactor = logmod.configure(args.log_level, cache=args.command == "serve")
    out = _Out(sys.stdout, redactor)
    err = _Out(sys.stderr, redactor)
    try:
        # check-config refuses what serve refuses (serve checks after --listen applies).
        strict = args.command == "check-config" and not args.insecure
        config = load(args.config, insecure=not strict) if args.config else default_config()
        if getattr(args, "listen", None):
            parse_listen(args.listen, "--listen")
            config = dataclasses.replace(config, server=dataclasses.replace(config.server, listen=args.listen))
        if getattr(args, "replica_id", None):
            config = dataclasses.replace(config, store=dataclasses.replace(config.store, replica_id=args.replica_id))
    except ConfigError as exc:
        _config_errors(args, exc, err)
        return EXIT_CONFIG
    redactor.update(config.secrets)
    try:
        handler = _COMMANDS[args.command]
        return int(handler(args, config, out, err))
    except ConfigError as exc:
        _config_errors(args, exc, err)
        return EXIT_CONFIG
    except StoreError as exc:
        if args.command == "serve":
            logmod.get_logger().error("store.unusable", error=str(exc))
        err.line(f"{PROG}: {exc}")
        return EXIT_STORE
    except KeyboardInterrupt:
        return EXIT_FAILED


def _config_errors(args: argparse.Namespace, exc: ConfigError, err: "_Out") -> None:
    """One line per error, so a file with five mistakes is fixed in one round."""
    items = exc.errors if isinstance(exc, ConfigErrors) else (exc,)
    for item in items:
        if args.command == "serve":
            logmod.get_logger().error("config.invalid", key=item.key, error=item.message)
        err.line(f"{PROG}: config error: {item.key}: {item.message}")
    if len(items) > 1:
        err.line(f"{PROG}: {len(items)} errors in {getattr(args, 'config', None) or 'the configuration'}")


def _config_reference(args: argparse.Namespace) -> int:
    from .reference import reference

    text = reference()
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


class _Out:
    """Prints through the redactor."""

    def __init__(self, stream: TextIO, redactor: logmod.Redactor) -> None:
        self._stream = stream
        self._redactor = redactor

    def line(self, text: str = "") -> None:
        self._stream.write(self._redactor.redact(text) + "\n")
        self._stream.flush()


# -- commands ----------------------------------------------------------------------


def _serve(args: argparse.Namespace, config: Config, out: _Out, err: _Out) -> int:
    from .server import serve

    return asyncio.run(serve(config, insecure=args.insecure))


def _check_config(args: argparse.Namespace, config: Config, out: _Out, err: _Out) -> int:
    s, d = config.server, config.delivery
    out.line(f"config OK: {config.source}")
    out.line(f"listen     {s.listen}  token: {'set' if s.token else 'none'}  max_body_bytes: {s.max_body_bytes}")
    where = config.store.path if config.store.backend == "sqlite" else "postgres (dsn from config, not shown)"
    out.line(f"store      {where}  keep_delivered: {config.store.keep_delivered}")
    out.line(
        f"delivery   timeout {_dur(d.timeout)}  backoff {_dur(d.backoff_initial)}..{_dur(d.backoff_max)}  "
        f"max_age {_dur(d.max_age)}  repeat_interval {_dur(d.repeat_interval)}  workers {d.workers}"
    )
    out.line(f"targets    {len(config.targets)}")
    for t in config.targets.values():
        limit = f"{t.rate_limit.count}/{_dur(t.rate_limit.seconds)}" if t.rate_limit else "off"
        extras = [f"rate_limit {limit}"]
        if t.resolve_after is not None:
            extras.append(f"resolve_after {_dur(t.resolve_after)}")
        if t.timeout is not None:
            extras.append(f"timeout {_dur(t.timeout)}")
        if t.ca_file:
            extras.append(f"ca_file {t.ca_file}")
        out.line(f"  {t.name:<20} type {t.type:<24} {'  '.join(extras)}  keys: {', '.join(t.keys)}")
    if config.heartbeats:
        out.line(f"heartbeats {len(config.heartbeats)}")
        for h in config.heartbeats:
            ping = "  kapacitor ping: yes" if h.kapacitor_url else ""
            out.line(f"  {h.name:<20} every {_dur(h.interval)}  {h.method}{ping}")
    if config.kapacitor.url is not None:
        k = config.kapacitor
        routes = ", ".join(f"{topic} -> {target}" for topic, target in (k.routes or {}).items()) or "none"
        out.line(f"kapacitor  reconcile every {_dur(k.reconcile_interval)}  routes: {routes}  "
                 f"default_target: {k.default_target or 'none'}  token: {'set' if k.token else 'none'}")
    for t in config.targets.values():
        for warning in getattr(t.target, "warnings", lambda: [])():
            err.line(f"warning: target.{t.name}: {warning}")
    if not s.is_loopback and not s.token:
        err.line(f"warning: server.listen: {s.listen} is not a loopback address and has no token (--insecure)")
    return EXIT_OK


def _send_test(args: argparse.Namespace, config: Config, out: _Out, err: _Out) -> int:
    from .sender import Sender, send_once
    from .synthetic import synthetic_event

    config = bind_bridge_url(config)
    target = config.targets.get(args.target)
    if target is None:
        known = ", ".join(sorted(config.targets)) or "none"
        raise ConfigError("--target", f"unknown target {args.target!r} (known: {known})")
    sender = Sender(config.delivery)
    try:
        response = send_once(sender, target, synthetic_event(args.level))
    except DeliveryError as exc:
        kind = "retryable" if exc.__class__.__name__ == "RetryableError" else "permanent"
        out.line(f"FAILED ({kind}): {exc}")
        if exc.status is not None:
            out.line(f"status: {exc.status}")
        if exc.body:
            out.line(exc.body)
        return EXIT_FAILED
    finally:
        sender.close()
    out.line(f"status: {response.status}")
    if response.body:
        out.line(response.body)
    return EXIT_OK


def _open_offline(config: Config) -> Tuple[Any, Any]:
    """(connection, module with queue_counts / dead_letters / replay) for the configured backend."""
    if config.store.backend == "postgres":
        from .pg import admin

        assert config.store.dsn is not None
        return admin.open_admin(config.store.dsn), admin
    from . import store

    return store.open_store(config.store.path, create=False), store


def _queue(args: argparse.Namespace, config: Config, out: _Out, err: _Out) -> int:
    from .store import STATES

    conn, backend = _open_offline(config)
    dead_letters, queue_counts = backend.dead_letters, backend.queue_counts
    try:
        if args.dead:
            rows = dead_letters(conn, args.target)
            if args.json:
                out.line(json.dumps([_dead_json(r) for r in rows], indent=2))
                return EXIT_OK
            if not rows:
                out.line("no dead letters")
            for r in rows:
                error = (r.last_error or "").replace("\n", " ")[:400]
                out.line(
                    f"#{r.seq} {r.target} id={r.key!r} level={r.level} received={_iso(r.received_at)} "
                    f"attempts={r.attempts} status={r.last_status if r.last_status is not None else '-'}"
                    f"{' synthetic' if r.synthetic else ''}"
                )
                out.line(f"    {error}")
            return EXIT_OK
        counts = queue_counts(conn)
        targets = sorted({t for t, _ in counts} | set(config.targets))
        if args.target:
            targets = [args.target]
        table: Dict[str, Dict[str, int]] = {t: {s: counts.get((t, s), 0) for s in STATES} for t in targets}
        if args.json:
            out.line(json.dumps(table, indent=2, sort_keys=True))
            return EXIT_OK
        width = max([len("target")] + [len(t) for t in targets])
        out.line(f"{'target':<{width}}  " + "  ".join(f"{s:>10}" for s in STATES))
        for t in targets:
            flag = "" if t in config.targets else "   (not configured)"
            out.line(f"{t:<{width}}  " + "  ".join(f"{table[t][s]:>10}" for s in STATES) + flag)
        return EXIT_OK
    finally:
        conn.close()


def _reconcile(args: argparse.Namespace, config: Config, out: _Out, err: _Out) -> int:
    from .reconcile import reconcile_file, routes_of

    if config.kapacitor.url is None:
        raise ConfigError("kapacitor.url", "is required for reconcile (add a [kapacitor] table)")
    routes = routes_of(config.kapacitor, config.fanout)
    actions = reconcile_file(config.kapacitor, routes, config.store.path, config.targets, dry_run=args.dry_run)
    if actions is None:
        err.line(f"{PROG}: Kapacitor could not be read; nothing was changed (see the log line above)")
        return EXIT_FAILED
    if args.json:
        out.line(json.dumps({"in_sync": not actions, "dry_run": args.dry_run,
                             "actions": [a.as_dict() for a in actions]}, indent=2))
        return EXIT_OK
    if not actions:
        out.line("in sync")
    for action in actions:
        out.line(action.line())
    return EXIT_OK


def _silence(args: argparse.Namespace, config: Config, out: _Out, err: _Out) -> int:
    import time

    from . import silences

    if not args.config:
        err.line(f"{PROG}: silence: --config is required (the silences live in its [store])")
        return EXIT_CONFIG
    now = time.time()
    try:
        with _silence_store(config, create=args.silence_command == "add") as store:
            if args.silence_command == "list":
                _list_silences(store.list_silences(include_ended=args.all, now=now), args.json, now, out)
            elif args.silence_command == "add":
                made = store.add_silence(silences.new_silence(
                    silences.parse_matchers(args.match), silences.parse_duration(args.duration), args.comment,
                    args.created_by or _operator(), now))
                out.line(f"{made.id}  until {_iso(made.ends_at)}  [{made.text}]")
            else:
                ended = store.expire_silence(args.silence_id, now)
                out.line(f"expired {ended.id}; a running bridge releases what it held within a second")
    except silences.SilenceError as exc:
        err.line(f"{PROG}: silence: {exc}")
        return EXIT_CONFIG
    return EXIT_OK


def _operator() -> str:
    import getpass
    import socket

    return f"{getpass.getuser()}@{socket.gethostname()}"


def _list_silences(found: List[Any], as_json: bool, now: float, out: _Out) -> None:
    from . import silences

    if as_json:
        out.line(silences.dumps(found, now))
        return
    if not found:
        out.line("no active silences")
    for x in found:
        state = "active" if x.active(now) else "ended"
        out.line(f"{x.id}  {state}  until {_iso(x.ends_at)}  by {x.created_by}  [{x.text}]  {x.comment}")


def _silence_store(config: Config, *, create: bool) -> Any:
    """The silences of ``[store]`` on a connection of the command's own (a bridge may be serving)."""
    if config.store.backend == "postgres":
        from .pg.silences import silence_store

        assert config.store.dsn is not None
        return silence_store(config.store.dsn)
    from .silences_sqlite import silence_store as sqlite_store

    return sqlite_store(config.store.path, create=create)


_COMMANDS: Dict[str, Any] = {
    "silence": _silence,
    "serve": _serve,
    "check-config": _check_config,
    "send-test": _send_test,
    "queue": _queue,
    "replay": cli_store.run_replay,
    "move": cli_store.move,
    "drop": cli_store.drop,
    "incidents": cli_store.incidents,
    "reconcile": _reconcile,
}


def _dead_json(r: Any) -> Dict[str, Any]:
    return {
        "seq": r.seq,
        "target": r.target,
        "id": r.key,
        "level": r.level,
        "received_at": _iso(r.received_at),
        "attempts": r.attempts,
        "last_status": r.last_status,
        "last_error": r.last_error,
        "synthetic": r.synthetic,
    }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dur(seconds: float) -> str:
    """Seconds back into the config's duration notation."""
    return format_duration(seconds)
