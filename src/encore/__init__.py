"""Encore: an open implementation of ACE-Step 1.5 music generation.

Importing `encore` is cheap: heavy modules load on first attribute access.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "load_pipeline": ("encore.pipeline.loading", "load_pipeline"),
    "Pipeline": ("encore.pipeline.pipeline", "Pipeline"),
    "GenerationRequest": ("encore.pipeline.request", "GenerationRequest"),
    "GenerationResult": ("encore.pipeline.request", "GenerationResult"),
}

__all__ = ["GenerationRequest", "GenerationResult", "Pipeline", "__version__", "load_pipeline"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'encore' has no attribute {name!r}")
