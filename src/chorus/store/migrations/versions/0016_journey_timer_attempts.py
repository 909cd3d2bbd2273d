"""journey_timers.attempts and .error: a timer whose transition keeps failing is retried later and later (a minute,
then twice as long each time, a day at most) instead of every minute forever, says why, and keeps the instant it
was first due (the time of the input it fires); journey_runs.attempts,
.retry_at and .error: the same for a scheduled run's chunk that fails

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 18:05:00.000000
"""
import sqlalchemy as sa
from alembic import op

import chorus.store.types


revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('journey_timers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('error', sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column('first_due', chorus.store.types.UTCDateTime(), nullable=True))
    with op.batch_alter_table('journey_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('retry_at', chorus.store.types.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('error', sa.String(length=300), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('journey_runs', schema=None) as batch_op:
        batch_op.drop_column('error')
        batch_op.drop_column('retry_at')
        batch_op.drop_column('attempts')
    with op.batch_alter_table('journey_timers', schema=None) as batch_op:
        batch_op.drop_column('first_due')
        batch_op.drop_column('error')
        batch_op.drop_column('attempts')
