"""invoices: a gapless number and issue date per order; payment gateways; PDF documents

``invoices``: one row per invoiced order (UNIQUE ``order_id`` and ``number``), numbered from
``document_counters`` like credit notes. ``orders.payment_gateways``: how the order was paid, as
the source names it (NULL for orders stored before). ``artifacts.created_at`` is indexed: the
print step looks for the documents archived in the last days.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10 09:00:00
"""

import sqlalchemy as sa
from alembic import op

import tasks.store.models

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('invoices',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('number', sa.String(length=40), nullable=False),
    sa.Column('issued_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('issued_on', sa.Date(), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_invoices_order_id_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invoices')),
    sa.UniqueConstraint('number', name=op.f('uq_invoices_number')),
    sa.UniqueConstraint('order_id', name=op.f('uq_invoices_order_id'))
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('payment_gateways', sa.JSON(none_as_null=True), nullable=True))
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifacts_created_at'), ['created_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifacts_created_at'))
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('payment_gateways')
    op.drop_table('invoices')
