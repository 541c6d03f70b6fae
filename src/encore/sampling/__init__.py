"""encore.sampling."""
