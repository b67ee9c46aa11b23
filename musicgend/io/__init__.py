"""I/O: MIDI files and ports, MQTT, session logs."""
