"""computed_traits (traits written back by analytics: lifetime value, probability alive, RFM)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('computed_traits',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('profile_id', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=80), nullable=False),
    sa.Column('value', chorus.store.types.JSONDoc(), nullable=True),
    sa.Column('model', sa.String(length=80), nullable=False),
    sa.Column('computed_at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'profile_id', 'name')
    )
    op.create_index('ix_computed_traits_model', 'computed_traits', ['workspace_id', 'model', 'computed_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_computed_traits_model', table_name='computed_traits')
    op.drop_table('computed_traits')
