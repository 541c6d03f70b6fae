"""encore.utils."""
