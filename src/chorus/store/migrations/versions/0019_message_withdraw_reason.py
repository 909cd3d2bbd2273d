"""messages.withdraw_reason: a withdrawal (decision 0045) that found the message being sent leaves it alone and notes
why here, so that a worker putting it back in the queue (deferred by caps or quiet hours, a retry after a transient
failure) skips it instead

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 17:15:00.000000
"""
import sqlalchemy as sa
from alembic import op


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('withdraw_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_column('withdraw_reason')
