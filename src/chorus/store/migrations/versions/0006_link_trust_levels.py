"""identity_links: a trust level (0 untrusted, 1 vouched, 2 trusted) instead of a trusted flag

A userHash proves who sends an event, not that the other identifiers in it are hers (decision 0022): links of
vouched events are kept apart from trusted ones. The table is rebuilt (the column is part of the primary key).
Existing rows: untrusted stay 0; trusted rows whose earliest sighting is an event from the public write key were
stored by a vouched event (since decision 0020 they were recorded as trusted) and become 1; the others 2. The
links of claims (0 and 1) stored at a timestamp earlier than their event's arrival move to the arrival.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 07:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import chorus.store.types


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('identity_links_new',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('a', sa.String(length=400), nullable=False),
    sa.Column('b', sa.String(length=400), nullable=False),
    sa.Column('trust', sa.SmallInteger(), autoincrement=False, nullable=False),
    sa.Column('at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('msg', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'a', 'b', 'trust', name='pk_identity_links_new')
    )
    # the event that stored the link: events.trusted is the source's trust (a write-key event is not trusted)
    op.execute(
        """
        INSERT INTO identity_links_new (workspace_id, a, b, trust, at, msg)
        SELECT l.workspace_id, l.a, l.b,
               CASE WHEN NOT l.trusted THEN 0
                    WHEN EXISTS (SELECT 1 FROM events e WHERE e.workspace_id = l.workspace_id
                                 AND e.message_id = l.msg AND NOT e.trusted) THEN 1
                    ELSE 2 END,
               l.at, l.msg
        FROM identity_links l
        """
    )
    # a claim's links sort no earlier than its arrival: those stored at a backdated timestamp move to it
    op.execute(
        """
        UPDATE identity_links_new SET at = (
            SELECT e.received_at FROM events e
            WHERE e.workspace_id = identity_links_new.workspace_id AND e.message_id = identity_links_new.msg)
        WHERE trust < 2 AND EXISTS (
            SELECT 1 FROM events e
            WHERE e.workspace_id = identity_links_new.workspace_id AND e.message_id = identity_links_new.msg
            AND e.received_at > identity_links_new.at)
        """
    )
    op.drop_index('ix_identity_links_b', table_name='identity_links')
    op.drop_table('identity_links')
    op.rename_table('identity_links_new', 'identity_links')
    _rename_pk('pk_identity_links_new', 'pk_identity_links')
    op.create_index('ix_identity_links_b', 'identity_links', ['workspace_id', 'b'], unique=False)


def downgrade() -> None:
    op.create_table('identity_links_old',
    sa.Column('workspace_id', sa.String(length=40), nullable=False),
    sa.Column('a', sa.String(length=400), nullable=False),
    sa.Column('b', sa.String(length=400), nullable=False),
    sa.Column('trusted', sa.Boolean(), nullable=False),
    sa.Column('at', chorus.store.types.UTCDateTime(), nullable=False),
    sa.Column('msg', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('workspace_id', 'a', 'b', 'trusted', name='pk_identity_links_old')
    )
    # vouched links were stored as trusted before this revision; of a vouched and a trusted row, the earliest
    op.execute(
        """
        INSERT INTO identity_links_old (workspace_id, a, b, trusted, at, msg)
        SELECT l.workspace_id, l.a, l.b, l.trust > 0, l.at, l.msg
        FROM identity_links l
        WHERE NOT EXISTS (SELECT 1 FROM identity_links m
                          WHERE m.workspace_id = l.workspace_id AND m.a = l.a AND m.b = l.b
                          AND (m.trust > 0) = (l.trust > 0)
                          AND (m.at < l.at OR (m.at = l.at AND m.msg < l.msg)))
        """
    )
    op.drop_index('ix_identity_links_b', table_name='identity_links')
    op.drop_table('identity_links')
    op.rename_table('identity_links_old', 'identity_links')
    _rename_pk('pk_identity_links_old', 'pk_identity_links')
    op.create_index('ix_identity_links_b', 'identity_links', ['workspace_id', 'b'], unique=False)


def _rename_pk(old: str, new: str) -> None:
    # PostgreSQL names the constraint (and its index); SQLite keeps no name that anything looks up
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'ALTER TABLE identity_links RENAME CONSTRAINT {old} TO {new}')
