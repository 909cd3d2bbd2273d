"""messages and imports by (workspace_id, created_at, id): the workspace's messages and imports newest first (GET
/api/messages, since an instant too; GET /api/imports) read a page in index order; each page sorted every message
(every import of every workspace) first

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 23:20:00.000000
"""
import sqlalchemy as sa
from alembic import op


revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

COLUMNS = ['workspace_id', 'created_at', 'id']


def _create(name: str, table: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        # An operator may have built it first with CREATE INDEX CONCURRENTLY (docs/operations.md), which does not
        # hold writes to the table while it builds: kept if it is valid and on these columns. A build that failed
        # (cancelled, timed out) leaves an invalid index the planner never uses: dropped and built again here.
        found = bind.execute(sa.text(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indexrelid = to_regclass(:name)"), {'name': name}).first()
        if found is not None:
            if found[0] and found[1].endswith(f"ON public.{table} USING btree ({', '.join(COLUMNS)})"):
                return
            op.drop_index(name, table_name=table)
    op.create_index(name, table, COLUMNS)


def upgrade() -> None:
    _create('ix_messages_created', 'messages')
    _create('ix_imports_created', 'imports')


def downgrade() -> None:
    op.drop_index('ix_imports_created', table_name='imports')
    op.drop_index('ix_messages_created', table_name='messages')
