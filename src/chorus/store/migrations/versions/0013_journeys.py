"""journeys: definitions and immutable versions, instances, timers, inputs held while paused, records (node
statistics and timelines), scheduled runs

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 13:33:09.212607
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    
    op.create_table('journey_held',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('journey_id', sa.String(length=64), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('input', chorus.store.types.JSONDoc(), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_journey_held'))
    )
    with op.batch_alter_table('journey_held', schema=None) as batch_op:
        batch_op.create_index('ix_journey_held_journey', ['workspace_id', 'journey_id', 'profile_id', 'at'], unique=False)

    op.create_table('journey_instances',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('journey_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('node', sa.String(length=64), nullable=True),
    sa.Column('entered_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('state', chorus.store.types.JSONDoc(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'id', name=op.f('pk_journey_instances'))
    )
    with op.batch_alter_table('journey_instances', schema=None) as batch_op:
        batch_op.create_index('ix_journey_instances_node', ['workspace_id', 'journey_id', 'version', 'node', 'status'], unique=False)
        batch_op.create_index('ix_journey_instances_profile', ['workspace_id', 'profile_id', 'journey_id'], unique=False)

    op.create_table('journey_records',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('journey_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('instance_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('node', sa.String(length=64), nullable=True),
    sa.Column('branch', sa.String(length=64), nullable=True),
    sa.Column('arm', sa.String(length=64), nullable=True),
    sa.Column('at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('detail', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_journey_records'))
    )
    with op.batch_alter_table('journey_records', schema=None) as batch_op:
        batch_op.create_index('ix_journey_records_journey', ['workspace_id', 'journey_id', 'version', 'kind', 'node'], unique=False)
        batch_op.create_index('ix_journey_records_profile', ['workspace_id', 'profile_id', 'id'], unique=False)

    op.create_table('journey_runs',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('journey_id', sa.String(length=64), nullable=False),
    sa.Column('run_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('after', sa.String(length=40), nullable=True),
    sa.Column('done', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('started', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'journey_id', 'run_at', name=op.f('pk_journey_runs'))
    )
    op.create_table('journey_timers',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('key', sa.String(length=120), nullable=False),
    sa.Column('journey_id', sa.String(length=64), nullable=False),
    sa.Column('instance_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('due_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'key', name=op.f('pk_journey_timers'))
    )
    with op.batch_alter_table('journey_timers', schema=None) as batch_op:
        batch_op.create_index('ix_journey_timers_due', ['due_at'], unique=False)
        batch_op.create_index('ix_journey_timers_profile', ['workspace_id', 'profile_id'], unique=False)

    op.create_table('journey_versions',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('journey_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('definition', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('published_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'journey_id', 'version', name=op.f('pk_journey_versions'))
    )
    op.create_table('journeys',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('entry', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('updated_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('started_at', chorus.store.types.UTCDateTime(), nullable=True),
    sa.Column('sweep', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'id', name=op.f('pk_journeys'))
    )
    


def downgrade() -> None:
    
    op.drop_table('journeys')
    op.drop_table('journey_versions')
    with op.batch_alter_table('journey_timers', schema=None) as batch_op:
        batch_op.drop_index('ix_journey_timers_profile')
        batch_op.drop_index('ix_journey_timers_due')

    op.drop_table('journey_timers')
    op.drop_table('journey_runs')
    with op.batch_alter_table('journey_records', schema=None) as batch_op:
        batch_op.drop_index('ix_journey_records_profile')
        batch_op.drop_index('ix_journey_records_journey')

    op.drop_table('journey_records')
    with op.batch_alter_table('journey_instances', schema=None) as batch_op:
        batch_op.drop_index('ix_journey_instances_profile')
        batch_op.drop_index('ix_journey_instances_node')

    op.drop_table('journey_instances')
    with op.batch_alter_table('journey_held', schema=None) as batch_op:
        batch_op.drop_index('ix_journey_held_journey')

    op.drop_table('journey_held')
    
