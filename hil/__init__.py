"""b2l HIL benches: wire simulators, edge runtimes and the cloud together (nothing imports hil)."""
