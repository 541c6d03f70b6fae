"""encore.audio."""
