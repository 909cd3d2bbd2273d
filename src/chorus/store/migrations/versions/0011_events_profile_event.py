"""events (workspace_id, profile_id, event, timestamp): a segment evaluation reads a person's events of the names
its rules use since each one's horizon (decision 0028)

Revision ID: 0011
Revises: 0009
Create Date: 2026-12-03 11:30:00.000000
"""
from alembic import op


revision = '0011'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_events_profile_event', 'events', ['workspace_id', 'profile_id', 'event', 'timestamp'])


def downgrade() -> None:
    op.drop_index('ix_events_profile_event', table_name='events')
