"""The cloud's services: plain classes on a ``cloud.db.engine.Database``, no web framework.

Routes and the MQTT consumer call these; every write runs in one transaction and commits before
the method returns, or raises a ``twin.errors.B2LError`` and writes nothing.
"""
