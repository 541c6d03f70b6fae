"""encore.frontends."""
