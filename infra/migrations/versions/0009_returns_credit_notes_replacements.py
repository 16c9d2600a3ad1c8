"""returns, credit notes and replacement orders

``returns`` / ``return_lines``: one row per RMA (UNIQUE ``rma``, random; UNIQUE ``effect_key``)
and the units of each order line in it. ``credit_notes``: a refund's correcting document with
its own gapless series (``document_counters`` holds the last number per series).
``orders.replaces_order_id`` links a replacement order (exchange, service case) to the original.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 20:54:00
"""

import sqlalchemy as sa
from alembic import op

import tasks.store.models

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('document_counters',
    sa.Column('series', sa.String(length=40), nullable=False),
    sa.Column('issued', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('series', name=op.f('pk_document_counters'))
    )
    op.create_table('returns',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('rma', sa.String(length=20), nullable=False),
    sa.Column('effect_key', sa.String(length=200), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('customer_id', sa.Integer(), nullable=False),
    sa.Column('source', sa.String(length=30), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=True),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('resolution', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('requested_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('return_by', sa.Date(), nullable=True),
    sa.Column('decided_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('decided_by', sa.String(length=100), nullable=True),
    sa.Column('decision_note', sa.Text(), nullable=True),
    sa.Column('label_url', sa.String(length=1000), nullable=True),
    sa.Column('label_ref', sa.String(length=500), nullable=True),
    sa.Column('received_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('closed_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('goods_value', tasks.store.models.Money(precision=18, scale=4), nullable=False),
    sa.Column('restocking_fee', tasks.store.models.Money(precision=18, scale=4), nullable=False),
    sa.Column('shipping_fee', tasks.store.models.Money(precision=18, scale=4), nullable=False),
    sa.Column('refund_amount', tasks.store.models.Money(precision=18, scale=4), nullable=True),
    sa.Column('credit_amount', tasks.store.models.Money(precision=18, scale=4), nullable=True),
    sa.Column('replacement_order_id', sa.Integer(), nullable=True),
    sa.Column('updated_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['customer_id'], ['customers.id'], name=op.f('fk_returns_customer_id_customers')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_returns_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['replacement_order_id'], ['orders.id'], name=op.f('fk_returns_replacement_order_id_orders'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_returns')),
    sa.UniqueConstraint('effect_key', name=op.f('uq_returns_effect_key')),
    sa.UniqueConstraint('rma', name=op.f('uq_returns_rma'))
    )
    with op.batch_alter_table('returns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_returns_customer_id'), ['customer_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_returns_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_returns_status'), ['status'], unique=False)

    op.create_table('credit_notes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('effect_key', sa.String(length=200), nullable=False),
    sa.Column('number', sa.String(length=40), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('return_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('invoice_number', sa.String(length=64), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('goods', tasks.store.models.Money(precision=18, scale=4), nullable=False),
    sa.Column('shipping', tasks.store.models.Money(precision=18, scale=4), nullable=False),
    sa.Column('fees', tasks.store.models.Money(precision=18, scale=4), nullable=False),
    sa.Column('total', tasks.store.models.Money(precision=18, scale=4), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('lines', sa.JSON(), nullable=False),
    sa.Column('issued_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('document_ref', sa.String(length=500), nullable=True),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_credit_notes_order_id_orders'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['return_id'], ['returns.id'], name=op.f('fk_credit_notes_return_id_returns'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_credit_notes')),
    sa.UniqueConstraint('effect_key', name=op.f('uq_credit_notes_effect_key')),
    sa.UniqueConstraint('number', name=op.f('uq_credit_notes_number'))
    )
    with op.batch_alter_table('credit_notes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_credit_notes_order_id'), ['order_id'], unique=False)

    op.create_table('return_lines',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('return_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('order_line_id', sa.Integer(), nullable=False),
    sa.Column('quantity', sa.Integer(), nullable=False),
    sa.Column('exchange_sku', sa.String(length=100), nullable=True),
    sa.ForeignKeyConstraint(['order_line_id'], ['order_lines.id'], name=op.f('fk_return_lines_order_line_id_order_lines'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['return_id'], ['returns.id'], name=op.f('fk_return_lines_return_id_returns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_return_lines')),
    sa.UniqueConstraint('return_id', 'order_line_id', name=op.f('uq_return_lines_return_id_order_line_id'))
    )
    with op.batch_alter_table('return_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_return_lines_order_line_id'), ['order_line_id'], unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('replaces_order_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_orders_replaces_order_id'), ['replaces_order_id'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_orders_replaces_order_id_orders'), 'orders', ['replaces_order_id'], ['id'], ondelete='SET NULL')



def downgrade() -> None:
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_orders_replaces_order_id_orders'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_orders_replaces_order_id'))
        batch_op.drop_column('replaces_order_id')

    with op.batch_alter_table('return_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_return_lines_order_line_id'))

    op.drop_table('return_lines')
    with op.batch_alter_table('credit_notes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_credit_notes_order_id'))

    op.drop_table('credit_notes')
    with op.batch_alter_table('returns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_returns_status'))
        batch_op.drop_index(batch_op.f('ix_returns_order_id'))
        batch_op.drop_index(batch_op.f('ix_returns_customer_id'))

    op.drop_table('returns')
    op.drop_table('document_counters')
