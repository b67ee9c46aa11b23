"""The model: BiGRU builder, artifacts on disk, fast per-frame inference."""
