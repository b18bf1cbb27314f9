"""Wire protocols shared by both ends: CAN (DBC), Pillar 1 serial frames, MQTT topics."""
