"""The ledger: Moonflower's durable store (SQLite by default, PostgreSQL in production).

Owns the tables, the connection and its migrations, API keys, and job records. Everything is
reached through a `Database` opened by the caller and passed in; nothing here holds a global
connection or reads settings. Prompt and completion text never enter the ledger.
"""

from moonflower.ledger.database import Database, default_database_url
from moonflower.ledger.jobs import (
    JobRecord,
    has_been_served,
    list_jobs,
    note_models_served,
    record_job,
)
from moonflower.ledger.keys import (
    Caller,
    CreatedKey,
    KeyInfo,
    authenticate,
    create_key,
    list_keys,
    revoke_key,
)

__all__ = [
    "Caller",
    "CreatedKey",
    "Database",
    "JobRecord",
    "KeyInfo",
    "authenticate",
    "create_key",
    "default_database_url",
    "has_been_served",
    "list_jobs",
    "list_keys",
    "note_models_served",
    "record_job",
    "revoke_key",
]
