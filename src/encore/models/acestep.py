"""AceStepModel: the container whose `state_dict()` mirrors the official `model.safetensors` (SPEC §2).

Children `decoder` (DiT), `encoder` (condition encoder), `tokenizer`, `detokenizer` and the CFG parameter
`null_condition_emb [1, 1, enc_H]`. Keys equal the official ones except `decoder.proj_in.*` /
`decoder.proj_out.*` (official `decoder.proj_in.1.*` / `decoder.proj_out.1.*`; renamed in
`pipeline/convert.py`). No buffers: RoPE tables and FSQ constants are computed on the fly.
"""

from __future__ import annotations

import torch
from torch import nn

from encore.models.audio_tokenizer import AudioDetokenizer, AudioTokenizer
from encore.models.condition_encoder import ConditionEncoder
from encore.models.config import AceStepConfig
from encore.models.dit import AceStepDiT


class AceStepModel(nn.Module):
    """All ACE-Step 1.5 DiT-checkpoint networks of one config (official `AceStepConditionGenerationModel`)."""

    def __init__(self, config: AceStepConfig) -> None:
        super().__init__()
        self.config = config
        self.decoder = AceStepDiT(config)
        self.encoder = ConditionEncoder(config)
        self.tokenizer = AudioTokenizer(config)
        self.detokenizer = AudioDetokenizer(config)
        self.null_condition_emb = nn.Parameter(torch.randn(1, 1, config.enc_hidden_size))

    def null_condition(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The CFG null condition shaped like `encoder_hidden_states` `[B, S, enc_H]` (a broadcast view)."""
        return self.null_condition_emb.expand_as(encoder_hidden_states)

    def codes_to_hints(self, indices: torch.Tensor) -> torch.Tensor:
        """5 Hz code indices `[B, T5]` / `[B, T5, 1]` -> 25 Hz latent hints `[B, 5*T5, C]` (SPEC §7.2-3)."""
        return self.detokenizer(self.tokenizer.quantizer.get_output_from_indices(indices))
