"""messages.approved_at (caps see messages other workers let through), ix_messages_sending (leases to
expire), early_reports (Meta statuses that arrive before the send is recorded), erasures (hashed profile ids the
event lake must forget)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('messages', sa.Column('approved_at', chorus.store.types.UTCDateTime(), nullable=True))
    op.create_index('ix_messages_sending', 'messages', ['next_attempt_at'], unique=False,
                    sqlite_where=sa.text("status = 'sending'"), postgresql_where=sa.text("status = 'sending'"))
    op.create_table('early_reports',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('provider_message_id', sa.String(length=400), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('provider_status', sa.String(length=40), nullable=False),
    sa.Column('at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('error', chorus.store.types.JSONDoc(), nullable=True),
    sa.Column('received_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_early_reports_message', 'early_reports', ['workspace_id', 'provider_message_id'], unique=False)
    op.create_index('ix_early_reports_received', 'early_reports', ['received_at'], unique=False)
    op.create_table('erasures',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('profile_hashes', chorus.store.types.JSONDoc(), nullable=False),
    sa.Column('erased_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )


def downgrade() -> None:
    op.drop_index('ix_messages_sending', table_name='messages')
    op.drop_table('erasures')
    op.drop_index('ix_early_reports_received', table_name='early_reports')
    op.drop_index('ix_early_reports_message', table_name='early_reports')
    op.drop_table('early_reports')
    with op.batch_alter_table('messages') as batch:
        batch.drop_column('approved_at')
