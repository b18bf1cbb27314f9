"""The cloud's storage: SQLAlchemy 2 models, engine set-up and Alembic migrations."""
