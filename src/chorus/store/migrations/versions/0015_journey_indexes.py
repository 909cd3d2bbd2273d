"""indexes for the journeys' statistics: messages by (workspace_id, journey_id, status) (a broadcast's messages by
status), journey_records by (workspace_id, instance_id, id) (the split arms' self-join)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 14:30:00.000000
"""
from alembic import op


revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_messages_journey', 'messages', ['workspace_id', 'journey_id', 'status'])
    op.create_index('ix_journey_records_instance', 'journey_records', ['workspace_id', 'instance_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_journey_records_instance', table_name='journey_records')
    op.drop_index('ix_messages_journey', table_name='messages')
