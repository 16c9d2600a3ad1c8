"""Alembic environment: uses the engine handed over by tasks.store.migrate, or the settings."""

from alembic import context

from tasks.settings import get_settings
from tasks.store.db import make_engine
from tasks.store.models import Base

config = context.config
engine = config.attributes.get("engine") or make_engine(get_settings().database_url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
