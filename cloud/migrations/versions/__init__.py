"""Revision scripts; ``0001_core`` is the first."""
