"""privacy requests: Shopify's mandatory privacy webhooks as obligations with a deadline

``privacy_requests`` records each ``customers/data_request``, ``customers/redact`` and
``shop/redact`` (UNIQUE ``request_key``, so a redrained delivery is recorded once): when it
arrived, when Shopify's 30 days run out (``due_at``), when it was done, where a data export was
written, and counts. No e-mail address in clear: ``subject`` is the keyed hash erasure uses.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:00:00
"""

import sqlalchemy as sa
from alembic import op

import tasks.store.models

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('privacy_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('request_key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=30), nullable=False),
    sa.Column('shop_domain', sa.String(length=255), nullable=True),
    sa.Column('shopify_request_id', sa.String(length=64), nullable=True),
    sa.Column('shopify_customer_id', sa.String(length=64), nullable=True),
    sa.Column('subject', sa.String(length=64), nullable=True),
    sa.Column('customer_ids', sa.JSON(), nullable=False),
    sa.Column('received_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('due_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('export_ref', sa.String(length=500), nullable=True),
    sa.Column('counts', sa.JSON(), nullable=False),
    sa.Column('note', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_privacy_requests')),
    sa.UniqueConstraint('request_key', name=op.f('uq_privacy_requests_request_key'))
    )
    with op.batch_alter_table('privacy_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_privacy_requests_completed_at'),
                              ['completed_at', 'due_at'], unique=False)


def downgrade() -> None:
    """Loses the record of privacy obligations (exports stay in the archive)."""
    with op.batch_alter_table('privacy_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_privacy_requests_completed_at'))

    op.drop_table('privacy_requests')
