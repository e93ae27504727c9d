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

# Set-based accept: a writer's whole batch in one statement per step instead of one plpgsql call
# (five statements) per row. The rules are those of oncall_enqueue, applied to the batch in order:
# 1. every key's queue row is locked first, in (target, key) order (every writer locks in that
#    order, so two replicas' batches cannot deadlock), before any seq is drawn: a key's rows are
#    numbered in commit order;
# 2. (a new statement, so a fresh snapshot: a row another replica committed while we waited for
#    its lock is seen) an event whose dedup key is stored, or appears earlier in the batch, is a
#    duplicate: counted, answered with the stored seq; the others are inserted with seqs drawn in
#    batch order, a key with nothing waiting or in flight gets its first new row as head (said in
#    o_head: a new head that is a resolve matters to a rate-limited dispatcher), and the
#    key's last new row sets or clears its auto-resolve timer. The commit is durable whatever the
#    session says (synchronous_commit on for this transaction). A batch that made a new head
#    (claimable work) wakes the other replicas: one NOTIFY per commit (PostgreSQL folds equal
#    ones) naming the writer, whose own dispatcher is woken without it. A row queued behind a
#    head needs no wake: it becomes claimable when that head finishes, on the replica finishing it.
_V4 = """
CREATE FUNCTION oncall_enqueue_many(p_target text[], p_key text[], p_level text[], p_body bytea[],
        p_now float8[], p_expire_at float8[], p_synthetic boolean[], p_dedup bytea[], p_from text)
    RETURNS TABLE (o_ord integer, o_seq bigint, o_dup boolean, o_head boolean)
    LANGUAGE plpgsql
    -- Every table access here is by key (a batch is at most 1,000 rows): a plan cached while the
    -- tables were small must not turn into a scan of the whole outbox per batch once they are large.
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
    AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'on', true);
    INSERT INTO oncall_queue AS x (target, key)
        SELECT DISTINCT u.t, u.k FROM unnest(p_target, p_key) AS u(t, k) ORDER BY u.t, u.k
        ON CONFLICT (target, key) DO UPDATE SET target = x.target;
    RETURN QUERY
    WITH inp AS (
        SELECT u.ord::integer AS ord, u.t, u.k, u.l, u.b, u.n, u.e, u.s, u.d
        FROM unnest(p_target, p_key, p_level, p_body, p_now, p_expire_at, p_synthetic, p_dedup)
            WITH ORDINALITY AS u(t, k, l, b, n, e, s, d, ord)
    ), old AS (
        SELECT i.ord, o.seq, i.d FROM inp i JOIN oncall_outbox o ON o.dedup = i.d WHERE i.d IS NOT NULL
    ), fresh AS (
        SELECT DISTINCT ON (COALESCE(i.d, int4send(i.ord))) i.*,
            count(*) OVER (PARTITION BY i.d) - 1 AS again
        FROM inp i WHERE NOT EXISTS (SELECT 1 FROM old WHERE old.ord = i.ord)
        ORDER BY COALESCE(i.d, int4send(i.ord)), i.ord
    ), numbered AS (
        SELECT f.*, row_number() OVER (ORDER BY f.ord) AS rn FROM fresh f
    ), drawn AS (
        SELECT array_agg(s.v ORDER BY s.v) AS seqs
        FROM (SELECT nextval(pg_get_serial_sequence('oncall_outbox', 'seq')) AS v FROM numbered) s
    ), m AS (
        SELECT n.*, (SELECT seqs FROM drawn)[n.rn] AS seq FROM numbered n
    ), ins AS (
        INSERT INTO oncall_outbox (seq, target, key, level, body, received_at, queued_at, state,
                next_attempt_at, synthetic, dedup, duplicates)
            SELECT m.seq, m.t, m.k, m.l, m.b, m.n, m.n, 'pending', m.n, m.s, m.d,
                CASE WHEN m.d IS NULL THEN 0 ELSE m.again END
            FROM m ORDER BY m.seq
    ), heads AS (
        UPDATE oncall_queue q SET head_seq = h.seq, due = h.n
        FROM (SELECT DISTINCT ON (m.t, m.k) m.t, m.k, m.seq, m.n FROM m ORDER BY m.t, m.k, m.seq) h
        WHERE q.target = h.t AND q.key = h.k AND q.head_seq IS NULL AND q.inflight_seq IS NULL
        RETURNING q.head_seq, pg_notify('oncall_enqueue', p_from)::text AS woke
    ), last AS (
        SELECT DISTINCT ON (m.t, m.k) m.t, m.k, m.e, m.b FROM m ORDER BY m.t, m.k, m.seq DESC
    ), timers AS (
        INSERT INTO oncall_expiry (target, key, due_at, body) SELECT l.t, l.k, l.e, l.b FROM last l
            WHERE l.e IS NOT NULL
            ON CONFLICT (target, key) DO UPDATE SET due_at = excluded.due_at, body = excluded.body
    ), untimed AS (
        DELETE FROM oncall_expiry x USING last l WHERE x.target = l.t AND x.key = l.k AND l.e IS NULL
    ), again AS MATERIALIZED (  -- first copies of events that appear more than once in the batch
        SELECT m.ord, m.d, m.seq FROM m WHERE m.d IS NOT NULL AND m.again > 0
    ), bump AS (
        UPDATE oncall_outbox o SET duplicates = o.duplicates + c.n
        FROM (SELECT old.seq, count(*) AS n FROM old GROUP BY old.seq) c WHERE o.seq = c.seq
    )
    SELECT old.ord, old.seq, true, false FROM old
    UNION ALL SELECT m.ord, m.seq, false, m.seq = ANY(ARRAY(SELECT head_seq FROM heads)) FROM m
    UNION ALL SELECT i.ord, a.seq, true, false FROM again a JOIN inp i ON i.d = a.d AND i.ord > a.ord
    ORDER BY 1;
END $$;
"""

#: Ordered migrations, version -> SQL; append only, never edit a released step.
MIGRATIONS: List[Tuple[int, str]] = [(1, _V1), (2, _V2), (3, _V3), (4, _V4)]
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
