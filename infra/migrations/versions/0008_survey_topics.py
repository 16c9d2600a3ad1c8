"""survey topics: the fit survey's answers beside the delivery survey's

``feedback.topic`` says which survey an answer belongs to ("delivery" for every row so far);
``feedback.rating`` becomes optional, since a fit answer has no 1-5 rating.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 19:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('feedback') as batch:
        batch.add_column(sa.Column('topic', sa.String(length=20), nullable=False,
                                   server_default='delivery'))
        batch.alter_column('rating', existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM feedback WHERE rating IS NULL")
    with op.batch_alter_table('feedback') as batch:
        batch.alter_column('rating', existing_type=sa.Integer(), nullable=False)
        batch.drop_column('topic')
