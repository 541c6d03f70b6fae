"""encore.frontends.server."""
