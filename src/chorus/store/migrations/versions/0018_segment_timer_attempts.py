"""segment_timers.attempts: a timer whose evaluation fails is tried again a minute later, then twice as long after
each failure, a day at most (counted from its first failure, however late the timer was when it first failed)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 14:05:00.000000
"""
import sqlalchemy as sa
from alembic import op


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('segment_timers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('segment_timers', schema=None) as batch_op:
        batch_op.drop_column('attempts')
