"""social audiences

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audiences',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('destination', sa.String(length=200), nullable=True),
    sa.Column('identifiers', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('consent_topic', sa.String(length=64), nullable=False),
    sa.Column('consent_mode', sa.String(length=16), nullable=False),
    sa.Column('options', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('sync_started_at', chorus.store.types.UTCDateTime(), nullable=True),
    sa.Column('last_sync', chorus.store.types.JSONDoc(), nullable=True),
    sa.Column('created_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audiences')),
    sa.UniqueConstraint('workspace_id', 'name', name=op.f('uq_audiences_workspace_id_name'))
    )
    op.create_table('audience_members',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('audience_id', sa.String(length=40), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=False),
    sa.Column('hashed_keys', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('synced_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audience_members'))
    )
    with op.batch_alter_table('audience_members', schema=None) as batch_op:
        batch_op.create_index('ix_audience_members_audience', ['audience_id', 'row_hash'], unique=False)
        batch_op.create_index('ix_audience_members_profile', ['workspace_id', 'profile_id'], unique=False)

    op.create_table('audience_removals',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('audience_id', sa.String(length=40), nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('row_hash', sa.String(length=64), nullable=False),
    sa.Column('hashed_keys', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('queued_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audience_removals'))
    )
    with op.batch_alter_table('audience_removals', schema=None) as batch_op:
        batch_op.create_index('ix_audience_removals_audience', ['audience_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('audience_removals', schema=None) as batch_op:
        batch_op.drop_index('ix_audience_removals_audience')
    op.drop_table('audience_removals')
    with op.batch_alter_table('audience_members', schema=None) as batch_op:
        batch_op.drop_index('ix_audience_members_profile')
        batch_op.drop_index('ix_audience_members_audience')
    op.drop_table('audience_members')
    op.drop_table('audiences')
