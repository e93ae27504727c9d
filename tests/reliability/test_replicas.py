"""Three replicas on one real PostgreSQL through a storm with kill -9s and a database crash
(scaled down for CI; ``python -m tests.reliability.soak --backend postgres --replicas 3`` runs
the full one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pgserver import PgServer

from .replicas import ReplicaStorm, run_replica_storm
from .soak import StormConfig


@pytest.mark.slow
@pytest.mark.parametrize("coalesce", ["worst-then-latest", "off"])
def test_replica_storm_balances(tmp_path: Path, coalesce: str) -> None:
    """Every accepted alert is delivered, dead-lettered or (coalescing on) superseded by a newer
    event of its id, each id ends in its latest state, per-id order holds, duplicates bounded,
    the aggregate rate limit holds and no singleton is held twice at once. With coalescing off
    every accepted event must arrive."""
    cfg = StormConfig(alerts=1200, ids=120, kills=8, posters=12, workers=8, kill_gap=(0.5, 1.5),
                      post_deadline=90.0, drain_timeout=120.0, max_duplicate_fraction=0.05)
    # Its own server: the storm crashes and restarts PostgreSQL.
    server = PgServer().start()
    try:
        storm = ReplicaStorm(replicas=3, pg_restarts=1, rate_limit=(80, 1.0), coalesce=coalesce)
        ledger, facts = run_replica_storm(cfg, storm, tmp_path, server=server)
    finally:
        server.close()
    print(ledger.to_markdown(), facts)
    assert ledger.balanced, ledger.to_markdown()
    assert ledger.kills == 8 and facts["pg_restarts"] == 1
    # The limit was binding (the storm wanted more) and never exceeded, across three senders.
    assert facts["rate_limit_excess"] == 0 and facts["rate_limit_peak_full_period"] >= 60
    assert facts["singleton_samples"] > 5
    if coalesce == "off":
        assert ledger.superseded == 0 and ledger.bridge_counts.get("superseded", 0) == 0
    else:
        # The rate limit makes a backlog, so coalescing had work; the books above still balance.
        assert ledger.superseded > 0 and ledger.final_state_mismatches == 0
