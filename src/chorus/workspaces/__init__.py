"""Workspaces, their sources (write keys) and api keys. Every row of data belongs to one workspace."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_sql
from sqlalchemy.dialects import sqlite as sqlite_sql
from sqlalchemy.engine import Connection, Engine

from chorus.errors import Conflict, NotFound, Unauthorized
from chorus.identity.identifiers import DEFAULT_DECLARED, DEFAULT_LIMITS, IdentityConfig
from chorus.registry import Registry
from chorus.registry import installed as installed_registry
from chorus.store.tables import sources, workspaces
from chorus.timeutil import iso, utcnow

SOURCE_KINDS = ("client", "server", "import", "webhook", "internal")
# internal: events Chorus itself records (message status changes)
TRUSTED_KINDS = frozenset({"server", "import", "webhook", "internal"})


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class Source:
    id: str
    workspace_id: str
    name: str
    kind: str
    channel: str | None = None

    @property
    def trusted(self) -> bool:
        return self.kind in TRUSTED_KINDS


@dataclass(frozen=True)
class Workspace:
    id: str
    name: str
    settings: dict

    @property
    def identity(self) -> IdentityConfig:
        return IdentityConfig.from_settings(self.settings)

    @property
    def timezone(self) -> str | None:
        """``messaging.timezone``: the local time of a person who has no zone of her own (``timeutil.zone``)."""
        tz = (self.settings.get("messaging") or {}).get("timezone")
        return tz if isinstance(tz, str) else None


def default_settings() -> dict:
    return {
        "default_region": None,
        "identifiers": dict(DEFAULT_DECLARED),
        "identifier_limits": dict(DEFAULT_LIMITS),
        "trait_policies": {},
    }


def _new_key(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def create(engine: Engine, name: str) -> dict:
    name = name.strip()
    if not name:
        raise ValueError("workspace name must not be empty")
    ws_id = "ws_" + uuid.uuid4().hex[:20]
    write_key = _new_key("wk")
    server_key = _new_key("sk")
    api_key = _new_key("ak")
    now = utcnow()
    with engine.begin() as conn:
        if conn.execute(sa.select(workspaces.c.id).where(workspaces.c.name == name)).first():
            raise Conflict(f"a workspace named {name!r} already exists", field="name")
        conn.execute(
            workspaces.insert().values(
                id=ws_id, name=name, api_key_hash=key_hash(api_key), settings=default_settings(), created_at=now
            )
        )
        conn.execute(
            sources.insert(),
            [
                dict(id="src_" + uuid.uuid4().hex[:20], workspace_id=ws_id, name="browser", kind="client",
                     key_hash=key_hash(write_key), public_key=write_key, created_at=now),
                dict(id="src_" + uuid.uuid4().hex[:20], workspace_id=ws_id, name="server", kind="server",
                     key_hash=key_hash(server_key), public_key=None, created_at=now),
            ],
        )  # fmt: skip
    return {"id": ws_id, "name": name, "write_key": write_key, "api_key": api_key, "server_write_key": server_key}


def get(conn: Connection, ws_id: str) -> Workspace:
    row = conn.execute(sa.select(workspaces).where(workspaces.c.id == ws_id)).first()
    if row is None:
        raise NotFound(f"workspace {ws_id} not found")
    return Workspace(row.id, row.name, row.settings)


def find(conn: Connection, name_or_id: str) -> Workspace:
    row = conn.execute(
        sa.select(workspaces).where(sa.or_(workspaces.c.id == name_or_id, workspaces.c.name == name_or_id))
    ).first()
    if row is None:
        raise NotFound(f"workspace {name_or_id!r} not found")
    return Workspace(row.id, row.name, row.settings)


def list_all(conn: Connection) -> list[Workspace]:
    return [
        Workspace(r.id, r.name, r.settings) for r in conn.execute(sa.select(workspaces).order_by(workspaces.c.name))
    ]


def by_api_key(conn: Connection, api_key: str) -> Workspace:
    row = conn.execute(sa.select(workspaces).where(workspaces.c.api_key_hash == key_hash(api_key))).first()
    if row is None:
        raise Unauthorized("unknown api key")
    return Workspace(row.id, row.name, row.settings)


# --- keys: rotation and revocation ----------------------------------------------------------------------------
# A workspace has one api key (its hash is on the workspace row) and one write key per source. Rotating a key
# makes a new one, shown once, and the old one stops working; revoking a write key leaves its source without a
# usable key. Revoking the api key is refused: it is the only way into the workspace's admin API, so losing it
# would lock everyone out (rotate it instead). A revoked source keeps its row (events name it) and a key_hash
# that no key hashes to: sha256 hex digests never contain the prefix below.
REVOKED = "revoked:"
KEYED_KINDS = ("client", "server")  # import, webhook and internal sources never had a usable key


def _revoked_hash() -> str:
    return REVOKED + secrets.token_hex(28)  # 64 characters, like a real hash; unique


def rotate_api_key(engine: Engine, ws_id: str) -> dict:
    """A new api key for the workspace (returned once); the old one stops working at once."""
    api_key = _new_key("ak")
    with engine.begin() as conn:
        if conn.execute(workspaces.update().where(workspaces.c.id == ws_id).values(api_key_hash=key_hash(api_key))
                        ).rowcount != 1:  # fmt: skip
            raise NotFound(f"workspace {ws_id} not found")
    return {"api_key": api_key}


def revoke_api_key(engine: Engine, ws_id: str) -> None:
    """Refused: the api key is the workspace's only admin key (see above)."""
    raise Conflict(
        "the api key is this workspace's only admin key: revoking it would lock everyone out; "
        "rotate it instead (the old key stops working at once)",
        field="api_key",
    )


def _keyed_source(conn: Connection, ws_id: str, name: str):
    row = conn.execute(sa.select(sources).where(sources.c.workspace_id == ws_id, sources.c.name == name)).first()
    if row is None or row.kind not in KEYED_KINDS:
        raise NotFound(f"no source {name!r} with a write key in this workspace", field="source")
    return row


def list_keys(conn: Connection, ws_id: str) -> list[dict]:
    """The workspace's write keys by source. Only client keys, public by design, are shown in full."""
    rows = conn.execute(
        sa.select(sources)
        .where(sources.c.workspace_id == ws_id, sources.c.kind.in_(KEYED_KINDS))
        .order_by(sources.c.name)
    ).all()
    return [
        {"source": r.name, "kind": r.kind, "revoked": r.key_hash.startswith(REVOKED),
         "write_key": r.public_key if not r.key_hash.startswith(REVOKED) else None, "created_at": iso(r.created_at)}
        for r in rows
    ]  # fmt: skip


def rotate_write_key(engine: Engine, ws_id: str, source_name: str) -> dict:
    """A new write key for a source (returned once; a revoked source gets a key again); the old one stops working."""
    with engine.begin() as conn:
        row = _keyed_source(conn, ws_id, source_name)
        key = _new_key("wk" if row.kind == "client" else "sk")
        conn.execute(
            sources.update().where(sources.c.id == row.id).values(
                key_hash=key_hash(key), public_key=key if row.kind == "client" else None
            )
        )  # fmt: skip
    return {"source": row.name, "kind": row.kind, "write_key": key, "source_id": row.id}


def revoke_write_key(engine: Engine, ws_id: str, source_name: str) -> dict:
    """The source's write key stops working; its events stay. Rotating the source later gives it a new key."""
    with engine.begin() as conn:
        row = _keyed_source(conn, ws_id, source_name)
        conn.execute(sources.update().where(sources.c.id == row.id).values(key_hash=_revoked_hash(), public_key=None))
    return {"source": row.name, "kind": row.kind, "revoked": True, "source_id": row.id}


def source_by_write_key(conn: Connection, write_key: str) -> Source:
    row = conn.execute(sa.select(sources).where(sources.c.key_hash == key_hash(write_key))).first()
    if row is None:
        raise Unauthorized("unknown write key")
    return Source(row.id, row.workspace_id, row.name, row.kind)


_INTERNAL: dict[tuple[str, str, str], Source] = {}  # source rows never change once created


def internal_source(conn: Connection, ws_id: str, kind: str, name: str) -> Source:
    """The source row used for imports and webhooks (created on first use; it has no usable key)."""
    hit = _INTERNAL.get((ws_id, kind, name))
    if hit is not None:
        return hit
    query = sa.select(sources).where(sources.c.workspace_id == ws_id, sources.c.name == name, sources.c.kind == kind)
    row = conn.execute(query).first()
    if row is None:
        # Two first uses at once (two imports naming a new channel) both find no row: a plain INSERT would make the
        # second fail on uq_sources_workspace_id_name. ON CONFLICT DO NOTHING waits for the other transaction
        # and, if it committed, inserts nothing; the second read (a new snapshot) then sees the other's row.
        sid = "src_" + uuid.uuid4().hex[:20]
        insert = pg_sql.insert if conn.dialect.name == "postgresql" else sqlite_sql.insert
        stmt = insert(sources).values(
            id=sid, workspace_id=ws_id, name=name, kind=kind, key_hash=key_hash(secrets.token_hex(32)),
            public_key=None, created_at=utcnow(),
        ).on_conflict_do_nothing(index_elements=[sources.c.workspace_id, sources.c.name])  # fmt: skip
        # RETURNING, not rowcount: SQLAlchemy answers -1 for an INSERT's rowcount on PostgreSQL (not kept by default)
        if conn.execute(stmt.returning(sources.c.id)).first() is not None:
            return Source(sid, ws_id, name, kind)  # not cached until committed and read back
        row = conn.execute(query).first()
        if row is None:  # the name is taken by a source of another kind: no internal source can have it
            raise Conflict(f"source {name!r} already exists as another kind of source", field="source")
    src = _INTERNAL[(ws_id, kind, name)] = Source(row.id, ws_id, row.name, row.kind)
    return src


def validate_settings(patch: dict, registry: Registry | None = None) -> dict:
    """Check a settings patch; errors name the field. Each top-level key is a section some package registered
    (chorus.registry) and checks with its own validator."""
    registry = registry or installed_registry()
    out = {}
    for key, value in patch.items():
        validate = registry.validator(key)
        if validate is None:
            raise ValueError(f"settings.{key} is not a known setting")
        out[key] = validate(value)
    return out


def update_settings(engine: Engine, ws_id: str, patch: dict, registry: Registry | None = None) -> dict:
    """Apply a settings patch (each section replaced whole). The packages that hear a section
    (``Registry.on_setting``) are told of a change in the same transaction: what they do commits with it."""
    registry = registry or installed_registry()
    clean = validate_settings(patch, registry)
    with engine.begin() as conn:
        # the row locked before it is read (PostgreSQL): a hook may wait (segments for the evaluations under way),
        # and a concurrent change must not be overwritten by this one's older read, nor be heard against it
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(workspaces.c.id).where(workspaces.c.id == ws_id).with_for_update())
        ws = get(conn, ws_id)
        settings = {**ws.settings, **clean}
        for key, value in clean.items():
            if ws.settings.get(key) != value:
                for hook in registry.setting_hooks(key):
                    hook(conn, ws_id, ws.settings.get(key), value)
        conn.execute(workspaces.update().where(workspaces.c.id == ws_id).values(settings=settings))
    return settings


__all__ = [
    "create", "get", "find", "by_api_key", "source_by_write_key", "Source", "Workspace",
    "rotate_api_key", "revoke_api_key", "list_keys", "rotate_write_key", "revoke_write_key",
]  # fmt: skip
