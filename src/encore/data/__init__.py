"""encore.data."""
