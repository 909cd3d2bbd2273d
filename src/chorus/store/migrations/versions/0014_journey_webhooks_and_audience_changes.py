"""journey webhooks (queued by a journey's webhook step, delivered by a worker task) and audience changes (a
journey's audience step, applied by the audience's sync)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 13:46:31.290157
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('audience_changes',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('key', sa.String(length=120), nullable=False),
    sa.Column('audience_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('action', sa.String(length=8), nullable=False),
    sa.Column('queued_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('applied', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('applied_at', chorus.store.types.UTCDateTime(), nullable=True),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audience_changes')),
    sa.UniqueConstraint('workspace_id', 'key', name=op.f('uq_audience_changes_workspace_id_key'))
    )
    with op.batch_alter_table('audience_changes', schema=None) as batch_op:
        batch_op.create_index('ix_audience_changes_pending', ['applied', 'audience_id', 'seq'], unique=False)
        batch_op.create_index('ix_audience_changes_profile', ['workspace_id', 'profile_id'], unique=False)

    op.create_table('journey_webhooks',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('key', sa.String(length=120), nullable=False),
    sa.Column('journey_id', sa.String(length=64), nullable=False),
    sa.Column('instance_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('body', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('due_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('created_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('done_at', chorus.store.types.UTCDateTime(), nullable=True),
    sa.Column('answer', sa.Integer(), nullable=True),
    sa.Column('error', sa.String(length=300), nullable=True),
    sa.PrimaryKeyConstraint('workspace_id', 'key', name=op.f('pk_journey_webhooks'))
    )
    with op.batch_alter_table('journey_webhooks', schema=None) as batch_op:
        batch_op.create_index('ix_journey_webhooks_due', ['status', 'due_at'], unique=False)
        batch_op.create_index('ix_journey_webhooks_profile', ['workspace_id', 'profile_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('journey_webhooks', schema=None) as batch_op:
        batch_op.drop_index('ix_journey_webhooks_profile')
        batch_op.drop_index('ix_journey_webhooks_due')

    op.drop_table('journey_webhooks')
    with op.batch_alter_table('audience_changes', schema=None) as batch_op:
        batch_op.drop_index('ix_audience_changes_profile')
        batch_op.drop_index('ix_audience_changes_pending')

    op.drop_table('audience_changes')
