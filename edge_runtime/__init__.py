"""b2l edge runtime: the process beside the pack (BMS links, outbox, uplinks)."""
