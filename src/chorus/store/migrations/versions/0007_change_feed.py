"""the change feed: profile_changes, feed_consumers, feed_pending

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('profile_changes',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('cause', sa.String(length=16), nullable=False),
    sa.Column('event_seq', sa.BigInteger(), nullable=True),
    sa.Column('target_id', sa.String(length=40), nullable=True),
    sa.Column('at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('detail', chorus.store.types.JSONDoc(), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_profile_changes')),
    sqlite_autoincrement=True
    )
    op.create_index('ix_profile_changes_profile', 'profile_changes', ['workspace_id', 'profile_id', 'seq'])
    op.create_table('feed_consumers',
    sa.Column('name', sa.String(length=60), nullable=False),
    sa.Column('since', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_feed_consumers'))
    )
    op.create_table('feed_pending',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('consumer', sa.String(length=60), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('seq', 'consumer', name=op.f('pk_feed_pending'))
    )
    op.create_index('ix_feed_pending_profile', 'feed_pending', ['consumer', 'profile_id', 'seq'])


def downgrade() -> None:
    op.drop_table('feed_pending')
    op.drop_table('feed_consumers')
    op.drop_table('profile_changes')
