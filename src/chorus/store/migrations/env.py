from alembic import context

from chorus.store.db import create_engine
from chorus.store.tables import metadata

config = context.config


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        context.configure(connection=connectable, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # every chorus command upgrades first; workers starting together must not race on the schema
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4242042)")
            context.run_migrations()
    engine.dispose()


run_migrations_online()
