"""encore.frontends.ui."""
