"""Alembic migration scripts of the cloud database (run them with ``cloud.db.migrate``)."""
