"""encore.training."""
