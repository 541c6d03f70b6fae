"""Planner: the 5 Hz LM (SPEC §1.5, §12.1) — a transformers `Qwen3ForCausalLM` held unchanged.

Holds the model, its tokenizer and the audio-code vocabulary mapping (`<|audio_code_N|>` = base id + N),
and computes logits for a subset of LM-head rows ("head slicing"). It has no sampling loop: decoding
lives in `encore.pipeline.planning`, logits transforms in `encore.sampling`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen3Config, Qwen3ForCausalLM
from transformers.cache_utils import DynamicCache

from encore.errors import CheckpointError

NUM_VALID_AUDIO_CODES = 64_000
"""Codes 0…63 999 are valid FSQ indices (8·8·8·5·5·5); the checkpoint has 65 535 slots."""
CODE_TOKEN_RE = re.compile(r"<\|audio_code_(\d+)\|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
IM_START_TOKEN = "<|im_start|>"
THINK_TOKEN = "<think>"
THINK_END_TOKEN = "</think>"
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def code_token(code: int) -> str:
    """Text of the token for audio code `code` (no range check)."""
    return f"<|audio_code_{code}|>"


@dataclass(frozen=True, kw_only=True)
class PlannerVocab:
    """Token ids the planner needs, read from its tokenizer (SPEC §12.1)."""

    vocab_size: int
    """Width of the LM head (may exceed the tokenizer length; extra rows are never sampled)."""
    tokenizer_size: int
    """Number of ids the tokenizer can decode."""
    code_base: int
    """Id of `<|audio_code_0|>`; code N is `code_base + N`."""
    num_code_slots: int
    """Contiguous `<|audio_code_N|>` tokens in the vocabulary (65 535 in official checkpoints)."""
    num_valid_codes: int = NUM_VALID_AUDIO_CODES
    eos_id: int
    pad_id: int
    im_start_id: int
    think_id: int
    think_end_id: int
    newline_id: int
    special_ids: tuple[int, ...]
    """Every added/special token id (banned inside free text)."""

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> PlannerVocab:
        """Read and check the planner token layout.

        Raises:
            ValueError: a required token is missing or audio-code ids are not `base + N`.
        """
        added = tokenizer.get_added_vocab()
        codes: dict[int, int] = {}
        for text, tid in added.items():
            m = CODE_TOKEN_RE.fullmatch(text)
            if m:
                codes[int(m.group(1))] = tid
        if 0 not in codes:
            raise ValueError("tokenizer has no <|audio_code_0|> token")
        base = codes[0]
        num_slots = len(codes)
        bad = [n for n, tid in codes.items() if tid != base + n or n >= num_slots]
        if bad:
            n = min(bad)
            raise ValueError(f"audio code ids are not contiguous: <|audio_code_{n}|> has id {codes[n]}, "
                             f"expected {base + n}")
        if num_slots < NUM_VALID_AUDIO_CODES:
            raise ValueError(f"tokenizer has {num_slots} audio-code tokens, need {NUM_VALID_AUDIO_CODES}")

        def need(token: str) -> int:
            tid = added.get(token)
            if tid is None:
                raise ValueError(f"tokenizer has no {token!r} token")
            return int(tid)

        newline = tokenizer.encode("\n", add_special_tokens=False)
        if len(newline) != 1:
            raise ValueError(f"'\\n' must be one token, tokenizer gives {newline}")
        if vocab_size < base + num_slots:
            raise ValueError(f"LM head has {vocab_size} rows but audio codes need {base + num_slots}")
        specials = set(added.values()) | set(tokenizer.all_special_ids)
        return cls(
            vocab_size=vocab_size, tokenizer_size=len(tokenizer), code_base=base, num_code_slots=num_slots,
            eos_id=need(EOS_TOKEN), pad_id=need(PAD_TOKEN), im_start_id=need(IM_START_TOKEN),
            think_id=need(THINK_TOKEN), think_end_id=need(THINK_END_TOKEN), newline_id=newline[0],
            special_ids=tuple(sorted(specials)),
        )

    def code_token_id(self, code: int) -> int:
        """Token id of audio code `code` (0 ≤ code < num_valid_codes)."""
        if not 0 <= code < self.num_valid_codes:
            raise ValueError(f"audio code {code} outside 0…{self.num_valid_codes - 1}")
        return self.code_base + code

    def code_of(self, token_id: int) -> int | None:
        """Audio code of `token_id`, or None when it is not a valid audio-code token."""
        code = token_id - self.code_base
        return code if 0 <= code < self.num_valid_codes else None


@dataclass(frozen=True, eq=False)
class RowSet:
    """A subset of LM-head rows (vocabulary ids), kept as contiguous blocks so slicing needs no copy.

    `ids` lists the vocabulary ids in output order; `blocks` are the same ids as `[start, end)` ranges.
    """

    ids: torch.Tensor
    blocks: tuple[tuple[int, int], ...]
    _device_ids: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def from_ids(cls, ids: Sequence[int]) -> RowSet:
        """Build from vocabulary ids (kept in the given order)."""
        blocks: list[tuple[int, int]] = []
        for i in ids:
            if blocks and blocks[-1][1] == i:
                blocks[-1] = (blocks[-1][0], i + 1)
            else:
                blocks.append((i, i + 1))
        return cls(torch.tensor(list(ids), dtype=torch.long), tuple(blocks))

    @classmethod
    def from_blocks(cls, blocks: Sequence[tuple[int, int]]) -> RowSet:
        """Build from `[start, end)` ranges (kept in the given order)."""
        ids = torch.cat([torch.arange(s, e, dtype=torch.long) for s, e in blocks])
        return cls(ids, tuple((int(s), int(e)) for s, e in blocks))

    def __len__(self) -> int:
        return int(self.ids.numel())

    def on(self, device: torch.device) -> torch.Tensor:
        """`ids` on `device` (cached)."""
        key = str(device)
        if key not in self._device_ids:
            self._device_ids[key] = self.ids.to(device)
        return self._device_ids[key]


def _read_config(path: Path) -> dict[str, Any]:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(str(path), "planner folder has no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(str(cfg_path), f"invalid JSON: {e}") from e
    if cfg.get("model_type") != "qwen3":
        raise CheckpointError(str(cfg_path), f"model_type {cfg.get('model_type')!r} is not 'qwen3'")
    return dict(cfg)


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on CUDA (official), fp32 elsewhere."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


class Planner:
    """The 5 Hz LM with its tokenizer and audio-code mapping.

    Args:
        model: a `Qwen3ForCausalLM` (already on its device and dtype).
        tokenizer: the matching tokenizer (ChatML specials, `<think>`, `</think>`, audio codes).
    """

    def __init__(self, model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerBase) -> None:
        if model.lm_head.bias is not None:
            raise ValueError("planner LM head must have no bias")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab = PlannerVocab.from_tokenizer(tokenizer, int(model.config.vocab_size))
        self._token_texts: tuple[str, ...] | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None) -> Planner:
        """Load an `acestep-5Hz-lm-*` folder (config.json, safetensors, tokenizer files).

        Raises:
            CheckpointError: the folder, its config, weights or tokenizer is missing or incompatible.
        """
        path = Path(path)
        if not path.is_dir():
            raise CheckpointError(str(path), "planner folder does not exist")
        _read_config(path)
        if not any(path.glob("*.safetensors")):
            raise CheckpointError(str(path), "no *.safetensors weights (only safetensors are loaded)")
        dev = torch.device(device)
        dt = dtype or default_dtype(dev)
        if dt not in SUPPORTED_DTYPES:
            raise ValueError(f"dtype {dt} unsupported; use one of {SUPPORTED_DTYPES}")
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as e:
            raise CheckpointError(str(path), f"cannot load tokenizer: {e}") from e
        model = Qwen3ForCausalLM.from_pretrained(str(path), dtype=dt, use_safetensors=True)
        model.to(dev)
        try:
            return cls(model, tokenizer)
        except ValueError as e:
            raise CheckpointError(str(path), str(e)) from e

    # --- properties ---
    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lm_head.weight.dtype

    @property
    def config(self) -> Qwen3Config:
        return self.model.config  # type: ignore[no-any-return]

    # --- text <-> ids ---
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no BOS/EOS added; the planner tokenizer appends none)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, special tokens kept."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))

    def token_texts(self) -> tuple[str, ...]:
        """Decoded text of every tokenizer id (computed once; used to build decoding masks)."""
        if self._token_texts is None:
            texts = self.tokenizer.batch_decode([[i] for i in range(self.vocab.tokenizer_size)],
                                                skip_special_tokens=False)
            self._token_texts = tuple(texts)
        return self._token_texts

    def codes_to_ids(self, codes: Sequence[int]) -> list[int]:
        """Token ids of audio codes (each 0 ≤ code < 64 000)."""
        return [self.vocab.code_token_id(int(c)) for c in codes]

    # --- network ---
    def new_cache(self) -> DynamicCache:
        """An empty KV cache for `forward`."""
        return DynamicCache(config=self.config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache: DynamicCache) -> torch.Tensor:
        """Run the transformer body (no LM head), appending to `cache`.

        Args:
            input_ids: `(B, L)` long.
            attention_mask: `(B, past + L)` long, 0 at left padding.
            position_ids: `(B, L)` long.
            cache: KV cache, updated in place.

        Returns:
            Final hidden states `(B, L, H)` in the model dtype.
        """
        # Positional cache argument: transformers 4.x names it `past_key_values`, 5.x `cache`.
        out = self.model.model(input_ids, attention_mask, position_ids, cache, use_cache=True)
        return out.last_hidden_state  # type: ignore[no-any-return]

    def logits(self, hidden: torch.Tensor, rows: RowSet | None = None) -> torch.Tensor:
        """LM-head logits for all rows, or only `rows` (head slicing).

        Args:
            hidden: `(B, H)` final hidden states.
            rows: vocabulary ids to score; None scores the whole vocabulary.

        Returns:
            `(B, V)` or `(B, len(rows))` float32 logits, columns in `rows.ids` order.
        """
        weight = self.model.lm_head.weight
        if rows is None:
            return F.linear(hidden, weight).float()
        if len(rows.blocks) <= 4:
            # Slices of the weight are views: the code block costs no copy (64 000 rows of 217 k).
            parts = [F.linear(hidden, weight[s:e]) for s, e in rows.blocks]
            return (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)).float()
        return F.linear(hidden, weight.index_select(0, rows.on(weight.device))).float()
