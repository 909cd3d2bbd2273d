"""a person's segment rows by covering indexes: segment_members and list_members (workspace_id, profile_id, then
the segment or list id), and segment_timers (workspace_id, profile_id, segment_id, due_at). SQLite planned the
lookups of one person's memberships by the primary key's covering index on the workspace alone (every member of
the workspace read), and a person's timers had no index at all.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 13:50:00.000000
"""
from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_segment_members_profile', table_name='segment_members')
    op.create_index('ix_segment_members_profile', 'segment_members', ['workspace_id', 'profile_id', 'segment_id'])
    op.drop_index('ix_list_members_profile', table_name='list_members')
    op.create_index('ix_list_members_profile', 'list_members', ['workspace_id', 'profile_id', 'list_id'])
    op.create_index('ix_segment_timers_profile', 'segment_timers',
                    ['workspace_id', 'profile_id', 'segment_id', 'due_at'])


def downgrade() -> None:
    op.drop_index('ix_segment_timers_profile', table_name='segment_timers')
    op.drop_index('ix_list_members_profile', table_name='list_members')
    op.create_index('ix_list_members_profile', 'list_members', ['workspace_id', 'profile_id'])
    op.drop_index('ix_segment_members_profile', table_name='segment_members')
    op.create_index('ix_segment_members_profile', 'segment_members', ['workspace_id', 'profile_id'])
