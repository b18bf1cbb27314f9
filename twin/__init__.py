"""b2l twin core: the pure domain shared by the edge and the cloud (no I/O, no clocks)."""
