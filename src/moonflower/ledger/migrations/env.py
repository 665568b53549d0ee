"""Alembic environment for the ledger.

Migrates the connection that `Database.open` hands in through
`config.attributes["connection"]`; run from the alembic command line instead, it opens its own
engine for `-x url=...`, or writes SQL for that URL's dialect in offline (--sql) mode.
Configures no logging and reads no environment variables.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from moonflower.ledger.database import create_engine, lift_statement_timeout
from moonflower.ledger.tables import Base


def _run_migrations(connection: Connection) -> None:
    lift_statement_timeout(connection)
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_with_own_engine(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_migrations)
    finally:
        await engine.dispose()


def _url_from_command_line() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        raise SystemExit("pass the database URL: alembic -x url=<sqlalchemy url> ...")
    return url


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run_migrations(connection)
    elif context.is_offline_mode():
        context.configure(
            url=_url_from_command_line(), target_metadata=Base.metadata, literal_binds=True
        )
        with context.begin_transaction():
            context.run_migrations()
    else:
        asyncio.run(_run_with_own_engine(_url_from_command_line()))


_main()
