"""b2l cloud: ingestion, twins, history, commands, passports, access control."""
