"""Operational store: SQLAlchemy Core tables, engine handling, Alembic migrations."""
