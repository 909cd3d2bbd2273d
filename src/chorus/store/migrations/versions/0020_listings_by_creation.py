"""messages and imports by (workspace_id, created_at, id): the workspace's messages and imports newest first (GET
/api/messages, since an instant too; GET /api/imports) read a page in index order; each page sorted every message
(every import of every workspace) first

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 23:20:00.000000
"""
from alembic import op


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # IF NOT EXISTS: on a big PostgreSQL store an operator may build them first with CREATE INDEX CONCURRENTLY
    # (docs/operations.md), which does not hold writes to messages while it builds
    op.create_index('ix_messages_created', 'messages', ['workspace_id', 'created_at', 'id'], if_not_exists=True)
    op.create_index('ix_imports_created', 'imports', ['workspace_id', 'created_at', 'id'], if_not_exists=True)


def downgrade() -> None:
    op.drop_index('ix_imports_created', table_name='imports')
    op.drop_index('ix_messages_created', table_name='messages')
