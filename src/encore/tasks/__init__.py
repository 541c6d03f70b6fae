"""encore.tasks."""
