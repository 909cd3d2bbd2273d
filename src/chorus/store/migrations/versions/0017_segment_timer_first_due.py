"""segment_timers.first_due: a timer postponed after a failed evaluation keeps the instant it was first due, at
which the person is decided when it is tried again (her changes dated then, as if nothing had failed)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 08:45:00.000000
"""
import sqlalchemy as sa
from alembic import op

import chorus.store.types


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('segment_timers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('first_due', chorus.store.types.UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('segment_timers', schema=None) as batch_op:
        batch_op.drop_column('first_due')
