"""LoRA adapters for training: the same objects the pipeline applies at inference (SPEC §13, FEATURES A6).

The implementation lives below the pipeline (`encore.pipeline.adapters` for the hooks, layers and adapter
sets; `encore.pipeline.adapter_format` for the PEFT/diffusers files), so inference never imports training and
a trained adapter is computed by exactly the code that later applies it. This module re-exports those names
for the recipes: `AdapterSet.add` creates a trainable adapter, `save_adapter` exports it.
"""

from __future__ import annotations

from encore.pipeline.adapter_format import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    DEFAULT_TARGET_MODULES,
    DIFFUSERS_COMPONENT,
    DIFFUSERS_METADATA_KEY,
    PEFT_PREFIX,
    AdapterFile,
    LoraConfig,
    read_adapter,
)
from encore.pipeline.adapters import (
    AdapterSet,
    AdapterStatus,
    LoraAdapter,
    LoraLayer,
    apply_loras,
    save_adapter,
)

__all__ = [
    "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "DEFAULT_TARGET_MODULES", "DIFFUSERS_COMPONENT", "DIFFUSERS_METADATA_KEY",
    "PEFT_PREFIX", "AdapterFile", "AdapterSet", "AdapterStatus", "LoraAdapter", "LoraConfig", "LoraLayer",
    "apply_loras", "read_adapter", "save_adapter",
]
