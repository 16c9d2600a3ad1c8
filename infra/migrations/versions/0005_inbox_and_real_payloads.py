"""inbox and real payloads: webhook inbox; orders and customers without e-mail; parcels
without tracking; lines that need no shipping

``inbox`` holds every webhook delivery before it is acknowledged (UNIQUE provider + delivery
id). ``customers.email`` and ``orders.email`` become optional (POS, phone and draft orders have
none); customers are found by the source's id first. ``orders.customer_note`` is Shopify's
``note`` (the buyer's note to the store, not a gift message); ``orders.source_updated_at`` lets
the newest version win when webhooks arrive out of order. ``order_lines`` learn
``requires_shipping``, ``variant_id`` and ``refunded_quantity``; ``shipments`` learn the source's ``fulfillment_id``
and may lack carrier and tracking number.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:20:00
"""

import sqlalchemy as sa
from alembic import op

import tasks.store.models

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inbox',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('provider', sa.String(length=20), nullable=False),
    sa.Column('topic', sa.String(length=60), nullable=False),
    sa.Column('delivery_id', sa.String(length=200), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=True),
    sa.Column('triggered_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('shop', sa.String(length=255), nullable=True),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('received_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('reason', sa.String(length=500), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('processed_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_inbox')),
    sa.UniqueConstraint('provider', 'delivery_id', name=op.f('uq_inbox_provider_delivery_id'))
    )
    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_inbox_status'), ['status', 'id'], unique=False)

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.alter_column('email', existing_type=sa.String(length=320), nullable=True)
        batch_op.create_index(batch_op.f('ix_customers_external_id'), ['external_id'],
                              unique=False)

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.alter_column('email', existing_type=sa.String(length=320), nullable=True)
        batch_op.add_column(sa.Column('customer_note', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('source_updated_at',
                                      tasks.store.models.UTCDateTime(timezone=True),
                                      nullable=True))

    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.add_column(sa.Column('requires_shipping', sa.Boolean(), nullable=False,
                                      server_default=sa.true()))
        batch_op.add_column(sa.Column('variant_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('refunded_quantity', sa.Integer(), nullable=False,
                                      server_default='0'))

    with op.batch_alter_table('shipments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fulfillment_id', sa.String(length=64), nullable=True))
        batch_op.alter_column('carrier', existing_type=sa.String(length=60), nullable=True)
        batch_op.alter_column('tracking_number', existing_type=sa.String(length=100),
                              nullable=True)
        batch_op.create_index(batch_op.f('ix_shipments_fulfillment_id'), ['fulfillment_id'],
                              unique=False)


def downgrade() -> None:
    """Loses data: parcels without a tracking number and orders without e-mail are deleted."""
    op.execute("DELETE FROM shipments WHERE tracking_number IS NULL OR carrier IS NULL")
    with op.batch_alter_table('shipments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_shipments_fulfillment_id'))
        batch_op.alter_column('tracking_number', existing_type=sa.String(length=100),
                              nullable=False)
        batch_op.alter_column('carrier', existing_type=sa.String(length=60), nullable=False)
        batch_op.drop_column('fulfillment_id')

    with op.batch_alter_table('order_lines', schema=None) as batch_op:
        batch_op.drop_column('refunded_quantity')
        batch_op.drop_column('variant_id')
        batch_op.drop_column('requires_shipping')

    op.execute("DELETE FROM orders WHERE email IS NULL")
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('source_updated_at')
        batch_op.drop_column('customer_note')
        batch_op.alter_column('email', existing_type=sa.String(length=320), nullable=False)

    op.execute("DELETE FROM customers WHERE email IS NULL AND id NOT IN "
               "(SELECT customer_id FROM orders)")
    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_customers_external_id'))
        batch_op.alter_column('email', existing_type=sa.String(length=320), nullable=False)

    with op.batch_alter_table('inbox', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbox_status'))
    op.drop_table('inbox')
