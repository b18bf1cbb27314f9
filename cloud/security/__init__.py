"""The cloud's security layer: passwords, tokens, the access policy, lockout and rate limits.

Pure logic only (no database, no web framework); the services in ``cloud.services`` persist
users, devices, grants and audit rows, and ``cloud.api.deps`` wires it all into routes.
"""
