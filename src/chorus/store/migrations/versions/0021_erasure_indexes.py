"""Two indexes an erasure reads by: profile_changes by (workspace_id, target_id), merges only (the merges that name
the person as the survivor), and merges by (workspace_id, merged_id) (those that name her merged-away ids). Without
them each erasure read every change the workspace kept (the feed keeps handled changes 7 days) and every merge
record of the workspace

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 02:45:00.000000
"""
import sqlalchemy as sa
from alembic import op


revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

# name, table, columns, partial-index condition
INDEXES = [
    ('ix_profile_changes_target', 'profile_changes', ['workspace_id', 'target_id'], 'target_id IS NOT NULL'),
    ('ix_merges_merged', 'merges', ['workspace_id', 'merged_id'], None),
]


def _create(name: str, table: str, columns: list[str], where: str | None) -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        # as 0020: one an operator built first with CREATE INDEX CONCURRENTLY is kept if valid and the same
        found = bind.execute(sa.text(
            "SELECT i.indisvalid, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indexrelid = to_regclass(:name)"), {'name': name}).first()
        if found is not None:
            definition = f"ON public.{table} USING btree ({', '.join(columns)})" + (f" WHERE ({where})" if where else "")
            if found[0] and found[1].endswith(definition):
                return
            op.drop_index(name, table_name=table)
    cond = {} if where is None else {'sqlite_where': sa.text(where), 'postgresql_where': sa.text(where)}
    op.create_index(name, table, columns, **cond)


def upgrade() -> None:
    for name, table, columns, where in INDEXES:
        _create(name, table, columns, where)


def downgrade() -> None:
    for name, table, _columns, _where in reversed(INDEXES):
        op.drop_index(name, table_name=table)
