"""segments: definitions, members, history, timers; static lists

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 11:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('segments',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('rule', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('computed_version', sa.Integer(), nullable=True),
    sa.Column('computed_at', chorus.store.types.UTCDateTime(), nullable=True),
    sa.Column('batch_after', sa.String(length=40), nullable=True),
    sa.Column('batch_version', sa.Integer(), nullable=True),
    sa.Column('created_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'id', name=op.f('pk_segments'))
    )
    op.create_table('segment_members',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('segment_id', sa.String(length=64), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('since', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'segment_id', 'profile_id', name=op.f('pk_segment_members'))
    )
    op.create_index('ix_segment_members_profile', 'segment_members', ['workspace_id', 'profile_id'])
    op.create_table('segment_history',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('segment_id', sa.String(length=64), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('change', sa.String(length=8), nullable=False),
    sa.Column('at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('cause', sa.String(length=40), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_segment_history'))
    )
    op.create_index('ix_segment_history_profile', 'segment_history', ['workspace_id', 'profile_id', 'id'])
    op.create_index('ix_segment_history_segment', 'segment_history', ['workspace_id', 'segment_id', 'id'])
    op.create_table('segment_timers',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('segment_id', sa.String(length=64), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('due_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'segment_id', 'profile_id', name=op.f('pk_segment_timers'))
    )
    op.create_index('ix_segment_timers_due', 'segment_timers', ['due_at'])
    op.create_table('static_lists',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'id', name=op.f('pk_static_lists'))
    )
    op.create_table('list_members',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('list_id', sa.String(length=64), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('added_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'list_id', 'profile_id', name=op.f('pk_list_members'))
    )
    op.create_index('ix_list_members_profile', 'list_members', ['workspace_id', 'profile_id'])


def downgrade() -> None:
    for t in ('list_members', 'static_lists', 'segment_timers', 'segment_history', 'segment_members', 'segments'):
        op.drop_table(t)
