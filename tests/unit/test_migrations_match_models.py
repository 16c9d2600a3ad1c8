"""The migrations build exactly the schema the models declare (a new column or table in
tasks/store/models.py without its migration fails here, not in a store's first run)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from tasks.store.models import Base


def test_migrations_build_what_the_models_declare(engine):
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
