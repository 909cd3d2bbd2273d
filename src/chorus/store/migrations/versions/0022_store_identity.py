"""store_identity: the store's id, made once, so that the event lake can tell its own store from another one

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-08 01:00:00.000000
"""
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import chorus.store.types

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        'store_identity',
        sa.Column('key', sa.String(16), nullable=False),
        sa.Column('id', sa.String(40), nullable=False),
        sa.Column('created_at', chorus.store.types.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_store_identity')),
    )
    op.bulk_insert(table, [{'key': 'store', 'id': f'st_{uuid.uuid4().hex}', 'created_at': datetime.now(UTC)}])


def downgrade() -> None:
    op.drop_table('store_identity')
