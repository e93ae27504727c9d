"""The PostgreSQL schema: versioned migrations applied at start under an advisory lock.

Every table is prefixed ``oncall_`` so the bridge can share a database with other
applications. Times are epoch seconds (``float8``) like the SQLite store, except
leases, which compare against the *database's* clock (:sql:`oncall_now()`) so
replicas on hosts with skewed clocks still agree on when a lease ran out.

The heart is ``oncall_queue``, one row per ``(target, key)``:

* ``head_seq``/``due``: the lowest pending row of the key while none is in flight;
* ``inflight_seq``/``owner``/``lease_until``: the row being delivered and by whom;
* ``held_until``: keep-alive holds the key (no delivery starts);
* ``fwd_level``/``fwd_received_at``: the last delivered event (repeat suppression);
* ``coalesced_upto``: the newest seq of the key that outage coalescing has already planned.

Every insert locks the key's queue row *before* it draws its ``seq``, so the rows
of one key get their seqs in commit order: a smaller seq can never commit after a
larger one of the same key, and the head is always the true oldest. Claims lock
queue rows with ``FOR UPDATE SKIP LOCKED``, so at most one row per key is in flight
across all replicas and no claim waits behind an insert.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import psycopg

from ..errors import StoreError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

#: pg_advisory_lock key for migrations ("konc" + 1).
MIGRATE_LOCK = 0x6B6F6E63_0001

_STATES = "'pending', 'inflight', 'delivered', 'dead', 'suppressed', 'superseded', 'silenced'"

_V1 = f"""
CREATE FUNCTION oncall_now() RETURNS float8 LANGUAGE sql VOLATILE
    AS $$ SELECT extract(epoch FROM clock_timestamp())::float8 $$;

CREATE TABLE oncall_outbox (
    seq             bigserial PRIMARY KEY,
    target          text    NOT NULL,
    key             text    NOT NULL,
    level           text    NOT NULL,
    body            bytea   NOT NULL,
    received_at     float8  NOT NULL,
    queued_at       float8  NOT NULL,
    state           text    NOT NULL CHECK (state IN ({_STATES})),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at float8  NOT NULL,
    last_error      text,
    last_status     integer,
    done_at         float8,
    synthetic       boolean NOT NULL DEFAULT false,
    dedup           bytea,
    duplicates      integer NOT NULL DEFAULT 0,
    resumed         integer NOT NULL DEFAULT 0,
    delivered_by    text
);
CREATE UNIQUE INDEX oncall_outbox_dedup ON oncall_outbox (dedup) WHERE dedup IS NOT NULL;
CREATE INDEX oncall_outbox_key_pending ON oncall_outbox (target, key, seq) WHERE state = 'pending';
CREATE INDEX oncall_outbox_state ON oncall_outbox (state, seq);

CREATE TABLE oncall_queue (
    target          text NOT NULL,
    key             text NOT NULL,
    head_seq        bigint,
    due             float8,
    inflight_seq    bigint,
    owner           text,
    lease_until     float8,
    held_by         text,
    held_until      float8,
    fwd_level       text,
    fwd_received_at float8,
    PRIMARY KEY (target, key)
);
CREATE INDEX oncall_queue_ready ON oncall_queue (target, due) WHERE head_seq IS NOT NULL;
CREATE INDEX oncall_queue_inflight ON oncall_queue (lease_until) WHERE inflight_seq IS NOT NULL;
CREATE INDEX oncall_queue_owner ON oncall_queue (owner) WHERE owner IS NOT NULL;

CREATE TABLE oncall_expiry (
    target text   NOT NULL,
    key    text   NOT NULL,
    due_at float8 NOT NULL,
    body   bytea  NOT NULL,
    PRIMARY KEY (target, key)
);
CREATE INDEX oncall_expiry_due ON oncall_expiry (due_at);

CREATE TABLE oncall_ledger (
    target       text    NOT NULL,
    key          text    NOT NULL,
    open         boolean NOT NULL,
    level        text    NOT NULL,
    fired_levels text    NOT NULL,
    body         bytea   NOT NULL,
    opened_at    float8  NOT NULL,
    told_at      float8  NOT NULL,
    seq          bigint  NOT NULL,
    PRIMARY KEY (target, key)
);
CREATE INDEX oncall_ledger_open ON oncall_ledger (target, key) WHERE open;

CREATE TABLE oncall_singleton (
    name        text PRIMARY KEY,
    owner       text,
    lease_until float8 NOT NULL DEFAULT 0,
    taken       bigint NOT NULL DEFAULT 0
);
CREATE TABLE oncall_rate (
    target text PRIMARY KEY
);
CREATE TABLE oncall_rate_spent (
    id     bigserial PRIMARY KEY,
    target text   NOT NULL,
    at     float8 NOT NULL
);
CREATE INDEX oncall_rate_spent_at ON oncall_rate_spent (target, at);
CREATE TABLE oncall_replica (
    id         text PRIMARY KEY,
    started_at float8 NOT NULL,
    seen_at    float8 NOT NULL
);

-- One accepted event: lock the key's queue row, drop a duplicate, insert, become the head if
-- nothing else of the key waits or flies, and set or clear the auto-resolve timer.
CREATE FUNCTION oncall_enqueue(p_target text, p_key text, p_level text, p_body bytea, p_now float8,
        p_expire_at float8, p_synthetic boolean, p_dedup bytea, OUT seq bigint, OUT dup boolean)
    LANGUAGE plpgsql AS $$
DECLARE
    q record;
BEGIN
    INSERT INTO oncall_queue AS x (target, key) VALUES (p_target, p_key)
        ON CONFLICT (target, key) DO UPDATE SET target = x.target
        RETURNING x.head_seq, x.inflight_seq INTO q;
    IF p_dedup IS NOT NULL THEN
        UPDATE oncall_outbox o SET duplicates = o.duplicates + 1 WHERE o.dedup = p_dedup RETURNING o.seq INTO seq;
        IF FOUND THEN
            dup := true;
            RETURN;
        END IF;
    END IF;
    INSERT INTO oncall_outbox (target, key, level, body, received_at, queued_at, state, next_attempt_at,
            synthetic, dedup)
        VALUES (p_target, p_key, p_level, p_body, p_now, p_now, 'pending', p_now, p_synthetic, p_dedup)
        RETURNING oncall_outbox.seq INTO seq;
    dup := false;
    IF q.head_seq IS NULL AND q.inflight_seq IS NULL THEN
        UPDATE oncall_queue SET head_seq = seq, due = p_now WHERE target = p_target AND key = p_key;
    END IF;
    IF p_expire_at IS NOT NULL THEN
        INSERT INTO oncall_expiry (target, key, due_at, body) VALUES (p_target, p_key, p_expire_at, p_body)
            ON CONFLICT (target, key) DO UPDATE SET due_at = excluded.due_at, body = excluded.body;
    ELSE
        DELETE FROM oncall_expiry WHERE target = p_target AND key = p_key;
    END IF;
END $$;

-- Point a key's queue row at its lowest pending row (called with the queue row locked,
-- when nothing of the key is in flight any more).
CREATE FUNCTION oncall_refresh(p_target text, p_key text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h record;
BEGIN
    SELECT o.seq, o.next_attempt_at INTO h FROM oncall_outbox o
        WHERE o.target = p_target AND o.key = p_key AND o.state = 'pending' ORDER BY o.seq LIMIT 1;
    UPDATE oncall_queue SET head_seq = h.seq, due = h.next_attempt_at, inflight_seq = NULL, owner = NULL,
            lease_until = NULL
        WHERE target = p_target AND key = p_key;
END $$;

-- Leases that ran out (their replica died or hung): the rows go back to pending, counted.
CREATE FUNCTION oncall_resume_expired(p_now float8) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    e record;
    n integer := 0;
BEGIN
    FOR e IN SELECT target, key, inflight_seq FROM oncall_queue
            WHERE inflight_seq IS NOT NULL AND lease_until < oncall_now()
            ORDER BY target, key LIMIT 1000 FOR UPDATE SKIP LOCKED LOOP
        UPDATE oncall_outbox SET state = 'pending', resumed = resumed + 1, next_attempt_at = p_now
            WHERE seq = e.inflight_seq AND state = 'inflight';
        PERFORM oncall_refresh(e.target, e.key);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
"""

# Outage coalescing: the newest seq of a key already coalesced, so a key is a candidate again
# only when an event newer than that arrives (the kept rows alone are not a backlog to redo).
_V2 = """
ALTER TABLE oncall_queue ADD COLUMN coalesced_upto bigint;
"""

# Silences, shared by every replica (bridge/silences.py holds the rules; rows they hold are in
# state 'silenced'), and an index for the status page's "last deliveries" (newest done_at first).
_V3 = """
CREATE TABLE oncall_silences (
    id          text   PRIMARY KEY,
    matchers    text   NOT NULL,
    starts_at   float8 NOT NULL,
    ends_at     float8 NOT NULL,
    comment     text   NOT NULL,
    created_by  text   NOT NULL,
    created_at  float8 NOT NULL,
    expired_at  float8
);
CREATE INDEX oncall_silences_ends ON oncall_silences (ends_at) WHERE expired_at IS NULL;
CREATE INDEX oncall_outbox_silenced ON oncall_outbox (target, key, seq) WHERE state = 'silenced';
CREATE INDEX oncall_outbox_done ON oncall_outbox (done_at) WHERE done_at IS NOT NULL;
"""

#: Ordered migrations, version -> SQL; append only, never edit a released step.
MIGRATIONS: List[Tuple[int, str]] = [(1, _V1), (2, _V2), (3, _V3)]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrate(conn: "psycopg.Connection[Any]", where: str) -> int:
    """Bring the database to :data:`SCHEMA_VERSION`; returns the version found.

    Runs under a session advisory lock, so replicas starting together migrate once;
    each step commits with its version, so a crash mid-way leaves a whole older schema.
    A database newer than this code refuses to start (an older replica must not write
    rows a newer schema would misread).
    """
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK,))
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS oncall_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM oncall_schema").fetchone()
        found = int(row[0]) if row is not None and row[0] is not None else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"store {where}: schema version {found} is newer than this bridge understands ({SCHEMA_VERSION})"
            )
        for version, script in MIGRATIONS:
            if version <= found:
                continue
            with conn.transaction():
                conn.execute(script.encode())
                conn.execute("INSERT INTO oncall_schema (version) VALUES (%s)", (version,))
        return found
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK,))
