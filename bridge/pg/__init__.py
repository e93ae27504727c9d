"""PostgreSQL backend: the outbox and ledger shared by any number of bridge replicas."""

from .outbox import SINGLETON_JOBS, PgOutbox
from .ratelimit import SharedRateLimiters
from .schema import MIGRATIONS, SCHEMA_VERSION

__all__ = ["MIGRATIONS", "PgOutbox", "SCHEMA_VERSION", "SINGLETON_JOBS", "SharedRateLimiters"]
