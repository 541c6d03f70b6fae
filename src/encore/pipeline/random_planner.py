"""Random-weight planner checkpoints for tests, the demo and benchmarks (no download, no network).

The tokenizer is a small byte-level BPE trained offline with the Qwen2 pre-tokenizer split (single
digits, byte-level), carrying the ChatML specials, `<think>`/`</think>` and all 65 535
`<|audio_code_N|>` slots at contiguous ids, plus a ChatML chat template that renders like Qwen3's.
Geometries: "tiny" (hidden 32, 2 layers) and "0.6b" (Qwen3-0.6B shape, official vocab width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3ForCausalLM

from encore.models.planner import EOS_TOKEN, PAD_TOKEN, Planner, code_token
from encore.sampling.constrained import FIELD_ORDER, KEYSCALES, LANGUAGES

Geometry = Literal["tiny", "0.6b"]
NUM_CODE_SLOTS = 65_535
OFFICIAL_VOCAB_SIZE = 217_204
"""151 669 Qwen3 ids + 65 535 audio-code slots (SPEC §1.5)."""

# Qwen2/Qwen3 pre-tokenizer split: letters runs, single digits, punctuation runs, newline runs.
_QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' -%}"
    "{%- set content = m.content -%}{%- set reasoning = '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_user and (loop.last or reasoning) -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') + '<|im_end|>\\n' -}}"
    "{%- else -%}{{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}{{- '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)
"""ChatML with Qwen3's assistant-reasoning rule (an assistant turn after the last user turn is
rendered `<think>\\n{reasoning}\\n</think>\\n\\n{content}`); written for the message shapes the
planner uses (system / user / assistant, no tools)."""

_CORPUS_WORDS = (
    "# Instruction # Caption # Lyric # Metas instrumental: true false NO USER INPUT Generate audio semantic "
    "tokens based on the given conditions Understand the musical describe semantics accordingly Expand "
    "Format user's input into a more detailed and specific musical description A an the with and of in on "
    "for to funky house track pop rock jazz piano guitar bass drums synth vocals female male warm bright "
    "dark slow fast energetic calm dreamy ambient electronic acoustic ballad chorus verse bridge intro outro "
    "[Verse] [Chorus] [Bridge] [Intro] [Outro] [Instrumental] love night light heart fire dance sing song "
    "I you we they my your is are was be it this that all over again never forever tonight"
)


def _corpus() -> list[str]:
    lines = [_CORPUS_WORDS]
    lines += [f"{name}: " for name in FIELD_ORDER]
    lines += [f"keyscale: {k}" for k in KEYSCALES]
    lines += [f"language: {lang}" for lang in LANGUAGES]
    lines += [f"bpm: {v}\nduration: {v * 2}\ntimesignature: {v % 4 + 2}" for v in range(30, 301, 7)]
    lines += ["caption: A funky house track with warm bass and bright synth.\n  The chorus is energetic."] * 4
    return lines


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A small deterministic byte-level BPE tokenizer with the planner's special tokens."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_corpus(), trainer=trainer)
    specials = [PAD_TOKEN, "<|im_start|>", EOS_TOKEN, "<think>", "</think>"]
    specials += [code_token(n) for n in range(NUM_CODE_SLOTS)]
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def planner_config(geometry: Geometry, vocab_size: int) -> Qwen3Config:
    """Qwen3 config of a planner geometry ("tiny" for tests, "0.6b" = acestep-5Hz-lm-0.6B shape)."""
    if geometry == "tiny":
        dims = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "num_key_value_heads": 2, "head_dim": 8}
    elif geometry == "0.6b":
        dims = {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128}
        vocab_size = max(vocab_size, OFFICIAL_VOCAB_SIZE)
    else:
        raise ValueError(f"unknown planner geometry {geometry!r}")
    return Qwen3Config(vocab_size=vocab_size, max_position_embeddings=40960, rope_theta=1_000_000.0,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                       **dims)  # type: ignore[arg-type]


def _init_weights(model: Qwen3ForCausalLM, seed: int) -> None:
    # Explicit generator: library code never seeds the global RNG.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)


def random_planner(*, geometry: Geometry = "tiny", seed: int = 0, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32,
                   tokenizer: PreTrainedTokenizerFast | None = None) -> Planner:
    """An in-memory planner with random weights (nothing written to disk)."""
    tokenizer = tokenizer or build_tokenizer()
    config = planner_config(geometry, len(tokenizer))
    model = Qwen3ForCausalLM(config)
    _init_weights(model, seed)
    model.to(device=torch.device(device), dtype=dtype)
    return Planner(model, tokenizer)


def write_random_planner(path: str | Path, *, seed: int = 0, geometry: Geometry = "tiny") -> Path:
    """Write a random planner checkpoint folder loadable by `Planner.from_pretrained`.

    Returns:
        The folder (config.json, model.safetensors, tokenizer.json, tokenizer_config.json with the
        chat template).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    planner = random_planner(geometry=geometry, seed=seed)
    planner.model.save_pretrained(str(path), safe_serialization=True)
    planner.tokenizer.save_pretrained(str(path))
    return path
