"""Generated raw data for the default pipeline."""
