"""b2l command line: the one entry point, ``b2l``."""
