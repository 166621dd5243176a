"""Alembic migrations for the relay's store; applied by :func:`relay.store.Store.migrate`."""
