"""erasure: keyed-hash suppressions and erasure requests

An erased address is suppressed by HMAC-SHA256 (``email_hmac``) instead of a plain sha256, which
anyone can reverse by hashing guessed addresses; such a row has no ``email_hash``. ``erasures``
records each request (no personal data) and the archive objects still to delete.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 10:00:00
"""

import sqlalchemy as sa
from alembic import op

import tasks.store.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email_hmac', sa.String(length=64), nullable=True))
        batch_op.alter_column('email_hash', existing_type=sa.String(length=64), nullable=True)
        batch_op.create_unique_constraint(
            batch_op.f('uq_suppressions_email_hmac'), ['email_hmac']
        )

    op.create_table('erasures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('subject', sa.String(length=64), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=100), nullable=False),
    sa.Column('requested_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('stale_objects', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'],
                            name=op.f('fk_erasures_customer_id_customers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erasures')),
    sa.UniqueConstraint('customer_id', name=op.f('uq_erasures_customer_id'))
    )
    with op.batch_alter_table('erasures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_erasures_subject'), ['subject'], unique=False)


def downgrade() -> None:
    """Loses data: erasure suppressions have no plain hash, so erased addresses are unsuppressed."""
    with op.batch_alter_table('erasures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_erasures_subject'))

    op.drop_table('erasures')
    op.execute("DELETE FROM suppressions WHERE email_hash IS NULL")
    with op.batch_alter_table('suppressions', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_suppressions_email_hmac'), type_='unique')
        batch_op.alter_column('email_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column('email_hmac')
