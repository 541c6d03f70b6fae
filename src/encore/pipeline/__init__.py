"""encore.pipeline."""
