"""b2l simulators: SimPy battery packs with their embedded BMS on CAN and serial links."""
