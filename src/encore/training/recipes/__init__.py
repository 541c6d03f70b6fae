"""encore.training.recipes."""
