"""customer pages: reviews, mail preferences by topic, page hit counts

``reviews`` holds what customers write on /r/{token} (UNIQUE ``effect_key`` review:<line id>:
one review per order line, replaced while pending), with moderation status. ``mail_preferences``
holds marketing topics an address turned off or on, keyed by the suppression list's hash.
``page_hits`` counts requests per day, page and method (prefetches by mail scanners).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 18:00:00
"""

import sqlalchemy as sa
from alembic import op

import tasks.store.models

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('reviews',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('effect_key', sa.String(length=200), nullable=False),
    sa.Column('order_id', sa.Integer(), nullable=False),
    sa.Column('order_line_id', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=100), nullable=False),
    sa.Column('rating', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=True),
    sa.Column('body', sa.Text(), nullable=True),
    sa.Column('display_name', sa.String(length=100), nullable=False),
    sa.Column('verified_buyer', sa.Boolean(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('reject_reason', sa.String(length=100), nullable=True),
    sa.Column('moderated_by', sa.String(length=100), nullable=True),
    sa.Column('moderated_at', tasks.store.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('submitted_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_reviews_order_id_orders'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['order_line_id'], ['order_lines.id'],
                            name=op.f('fk_reviews_order_line_id_order_lines'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reviews')),
    sa.UniqueConstraint('effect_key', name=op.f('uq_reviews_effect_key'))
    )
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reviews_order_id'), ['order_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviews_sku'), ['sku'], unique=False)
        batch_op.create_index(batch_op.f('ix_reviews_status'), ['status', 'submitted_at'],
                              unique=False)
    op.create_table('mail_preferences',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('email_hash', sa.String(length=64), nullable=False),
    sa.Column('topic', sa.String(length=30), nullable=False),
    sa.Column('subscribed', sa.Boolean(), nullable=False),
    sa.Column('source', sa.String(length=100), nullable=True),
    sa.Column('updated_at', tasks.store.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_mail_preferences')),
    sa.UniqueConstraint('email_hash', 'topic', name=op.f('uq_mail_preferences_email_hash_topic'))
    )
    op.create_table('page_hits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('page', sa.String(length=20), nullable=False),
    sa.Column('method', sa.String(length=10), nullable=False),
    sa.Column('hits', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_page_hits')),
    sa.UniqueConstraint('day', 'page', 'method', name=op.f('uq_page_hits_day_page_method'))
    )


def downgrade() -> None:
    """Loses reviews not yet exported, topic choices and hit counts."""
    op.drop_table('page_hits')
    op.drop_table('mail_preferences')
    with op.batch_alter_table('reviews', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reviews_status'))
        batch_op.drop_index(batch_op.f('ix_reviews_sku'))
        batch_op.drop_index(batch_op.f('ix_reviews_order_id'))
    op.drop_table('reviews')
