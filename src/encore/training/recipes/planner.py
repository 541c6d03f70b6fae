"""Planner LM recipe: teach a small Qwen3 causal LM the two planner directions with the SPEC §12.2 prompts.

* generate: `cot_prompt(caption, lyrics)` -> `<think>\\n{metas YAML}\\n</think>\\n\\n{audio codes}<|im_end|>`
  (the same text as phase 1 followed by the training-aligned "open" phase-2 prompt);
* understand: `understand_prompt(codes)` -> `<think>\\n{metas YAML with caption}\\n</think>\\n\\n#
  Lyric\\n{lyrics}<|im_end|>`.

The loss is next-token cross-entropy on the assistant completion only (the LM head runs only there). Codes are
the 5 Hz FSQ indices of each cached clip's mix latents under the trained DiT's tokenizer, so they are exactly
what that DiT's detokenizer expects. Starts from random weights or `init_from` (a planner folder).

Run: `python -m encore.training.recipes.planner cache_dir=runs/latents
dit_checkpoint=runs/dit/checkpoints/step-N
output_dir=runs/planner max_steps=6000`
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encore.errors import InvalidRequest
from encore.pipeline import planner_prompts as pp
from encore.pipeline.request import audio_codes_text
from encore.training import embedded
from encore.training.recipes.base import Recipe, RecipeConfig, load_module_tensors, run_cli, step_generator

log = logging.getLogger(__name__)

IGNORE = -100
TOKENIZER_DIR = "tokenizer"
CODES_FILE = "codes.jsonl"
_STREAM_BATCH = 11


@dataclass(frozen=True)
class PlannerExample:
    """One clip as the planner sees it."""

    caption: str
    codes: tuple[int, ...]
    """5 Hz FSQ indices of the whole clip."""
    bpm: int | None = None
    keyscale: str | None = None
    timesignature: str | None = None
    language: str = "unknown"
    lyrics: str = "[Instrumental]"
    captions: tuple[str, ...] = ()
    """Extra caption variants used as the user's caption (the CoT keeps the primary caption)."""


@dataclass(frozen=True, kw_only=True)
class PlannerTrainConfig(RecipeConfig):
    """`python -m encore.training.recipes.planner`: planner LM on (caption -> metas + codes) and
    (codes -> caption + metas)."""

    cache_dir: str = ""
    """Latent cache (labels + mix latents); empty only when examples are given directly."""
    dit_checkpoint: str = ""
    """DiT checkpoint whose audio tokenizer defines the codes."""
    geometry: str = "embedded"
    init_from: str | None = None
    """A planner folder (`Planner.from_pretrained` layout) to fine-tune instead of random initialisation."""
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    understand_prob: float = 0.3
    """Fraction of understand (codes -> caption + metas) examples."""
    max_codes: int = 150
    """Longest code window per example (30 s); longer clips are cropped at a random code."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.understand_prob <= 1.0:
            raise InvalidRequest("understand_prob", f"must be in [0, 1], got {self.understand_prob}")
        if self.max_codes < 1:
            raise InvalidRequest("max_codes", f"must be >= 1, got {self.max_codes}")


# --------------------------------------------------------------------------- text


def cot_values(example: PlannerExample, num_codes: int) -> dict[str, Any]:
    """The CoT fields (SPEC §12.2) of an example whose code window has `num_codes` codes."""
    values: dict[str, Any] = {
        "caption": example.caption,
        "duration": max(1, num_codes // 5),
        "language": example.language,
    }
    if example.bpm:
        values["bpm"] = int(example.bpm)
    if example.keyscale:
        values["keyscale"] = example.keyscale
    if example.timesignature:
        values["timesignature"] = str(example.timesignature)
    return values


def training_texts(example: PlannerExample, codes: Sequence[int], mode: str, caption: str) -> tuple[str, str]:
    """(prompt, completion) of one training example; the loss covers the completion only.

    Args:
        example: The clip.
        codes: The code window used.
        mode: `generate` or `understand`.
        caption: The user caption (a variant in generate mode).
    """
    cot = pp.format_cot(cot_values(example, len(codes)))
    if mode == "generate":
        return pp.cot_prompt(caption, example.lyrics), f"{cot}\n\n{audio_codes_text(codes)}<|im_end|>"
    if mode == "understand":
        return pp.understand_prompt(audio_codes_text(codes)), f"{cot}\n\n# Lyric\n{example.lyrics}<|im_end|>"
    raise ValueError(f"mode must be generate or understand, got {mode!r}")


def tokenize_pair(tokenizer: Any, prompt: str, completion: str) -> tuple[list[int], list[int]]:
    """(input ids, labels) with labels `IGNORE` over the prompt."""
    p = tokenizer.encode(prompt, add_special_tokens=False)
    c = tokenizer.encode(completion, add_special_tokens=False)
    return p + c, [IGNORE] * len(p) + c


# --------------------------------------------------------------------------- data from the latent cache


@torch.no_grad()
def clip_codes(model: Any, latents: torch.Tensor, silence: torch.Tensor, chunk: int = 750) -> list[int]:
    """5 Hz code indices of `[T, D]` latents under `model.tokenizer` (chunked; windows are independent)."""
    out: list[int] = []
    for start in range(0, latents.shape[0], chunk):
        _, idx = model.tokenizer.tokenize(latents[None, start : start + chunk], silence)
        out.extend(int(i) for i in idx[0, :, 0])
    return out


def examples_from_cache(
    cache_dir: str | Path, dit_checkpoint: str | Path, codes_path: Path
) -> list[PlannerExample]:
    """Planner examples of a latent cache, with codes from the DiT tokenizer (cached in `codes_path`)."""
    from encore.training.recipes.dit import LatentCache, load_dit_checkpoint

    cache = LatentCache.load(cache_dir)
    if codes_path.is_file():
        codes = {
            r["clip_id"]: r["codes"]
            for r in map(json.loads, codes_path.read_text(encoding="utf-8").splitlines())
        }
    else:
        model = load_dit_checkpoint(dit_checkpoint)
        codes = {c.clip_id: clip_codes(model, c.mix, cache.silence) for c in cache.clips}
        codes_path.write_text(
            "".join(json.dumps({"clip_id": k, "codes": v}) + "\n" for k, v in codes.items()), encoding="utf-8"
        )
    out = []
    for clip in cache.clips:
        lab = clip.labels
        out.append(
            PlannerExample(
                caption=lab.get("caption", ""),
                codes=tuple(codes[clip.clip_id]),
                bpm=lab.get("bpm"),
                keyscale=lab.get("keyscale"),
                timesignature=lab.get("timesignature"),
                language=lab.get("language", "unknown"),
                lyrics=lab.get("lyrics", "[Instrumental]"),
                captions=tuple(lab.get("captions", ())),
            )
        )
    return out


# --------------------------------------------------------------------------- recipe


class PlannerRecipe(Recipe[PlannerTrainConfig]):
    """Trains the planner LM (see module docstring)."""

    name = "planner"

    def __init__(
        self,
        config: PlannerTrainConfig,
        *,
        examples: Sequence[PlannerExample] | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(config)
        self.examples = list(examples) if examples is not None else None
        self._given_tokenizer = tokenizer
        """Planner tokenizer to use instead of building one (tests reuse one; building takes seconds)."""

    def build(self) -> None:
        from transformers import Qwen3ForCausalLM

        cfg = self.config
        self.tokenizer, self.model = self._model()
        assert isinstance(self.model, Qwen3ForCausalLM)
        self.model.to(self.device)
        if not (self.output_dir / TOKENIZER_DIR / "tokenizer.json").is_file():
            self.tokenizer.save_pretrained(str(self.output_dir / TOKENIZER_DIR))
        if self.examples is None:
            if not (cfg.cache_dir and cfg.dit_checkpoint):
                raise InvalidRequest("cache_dir", "needs cache_dir and dit_checkpoint (or examples)")
            self.examples = examples_from_cache(
                cfg.cache_dir, cfg.dit_checkpoint, self.output_dir / CODES_FILE
            )
        if not self.examples:
            raise InvalidRequest("cache_dir", "no planner examples")
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.95), weight_decay=cfg.weight_decay
        )

    def _model(self) -> tuple[Any, nn.Module]:
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        from encore.pipeline.random_planner import build_tokenizer

        cfg = self.config
        if cfg.init_from:
            tokenizer = AutoTokenizer.from_pretrained(cfg.init_from, local_files_only=True)
            return tokenizer, Qwen3ForCausalLM.from_pretrained(cfg.init_from, dtype=torch.float32)
        tokenizer = self._given_tokenizer or build_tokenizer()
        gen = torch.Generator().manual_seed(cfg.seed)
        model = Qwen3ForCausalLM(embedded.planner_config(cfg.geometry, len(tokenizer)))
        with torch.no_grad():  # explicit generator: no global RNG
            for name, p in sorted(model.named_parameters()):
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        return tokenizer, model

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        return {"lm": self.model}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.optimizer}

    def extra_state(self) -> dict[str, Any]:
        return {"lm_config": self.model.config.to_dict()}

    def sample_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input ids `[B, L]`, labels `[B, L]`, attention mask `[B, L]`) of step `step`, right-padded."""
        cfg = self.config
        assert self.examples is not None
        gen = step_generator(cfg.seed, step, _STREAM_BATCH)
        rows = []
        for _ in range(cfg.batch_size):
            ex = self.examples[int(torch.randint(len(self.examples), (1,), generator=gen))]
            n = min(cfg.max_codes, len(ex.codes))
            start = int(torch.randint(len(ex.codes) - n + 1, (1,), generator=gen))
            mode = (
                "understand" if float(torch.rand((1,), generator=gen)) < cfg.understand_prob else "generate"
            )
            variants = [ex.caption, *ex.captions]
            caption = variants[int(torch.randint(len(variants), (1,), generator=gen))]
            rows.append(
                tokenize_pair(self.tokenizer, *training_texts(ex, ex.codes[start : start + n], mode, caption))
            )
        length = max(len(ids) for ids, _ in rows)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)] = torch.tensor(x)
            labels[i, : len(y)] = torch.tensor(y)
            mask[i, : len(x)] = 1
        return ids, labels, mask

    def train_step(self, step: int) -> dict[str, float]:
        ids, labels, mask = (t.to(self.device) for t in self.sample_batch(step))
        self.model.train()
        hidden = self.model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        # Next-token targets; the head runs only where a completion token is predicted.
        targets = labels[:, 1:]
        keep = targets != IGNORE
        logits = self.model.lm_head(hidden[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), targets[keep])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = self.clip_gradients(self.model.parameters())
        self.optimizer.step()
        return {"loss": loss.item(), "grad_norm": grad_norm, "tokens": float(keep.sum())}


def export_planner(checkpoint: str | Path, dest: str | Path, *, dtype: torch.dtype = torch.float16) -> Path:
    """A planner checkpoint -> a `Planner.from_pretrained` folder (config, safetensors, tokenizer)."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    from encore.training.checkpointing import read_checkpoint

    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint).state
    model = Qwen3ForCausalLM(Qwen3Config.from_dict(state["extra"]["lm_config"]))
    weights = load_file(str(checkpoint / "model.safetensors"))
    load_module_tensors({"lm": model}, weights, str(checkpoint))
    tokenizer = AutoTokenizer.from_pretrained(
        str(checkpoint.parent.parent / TOKENIZER_DIR), local_files_only=True
    )
    dest = Path(dest)
    model.to(dtype).save_pretrained(str(dest), safe_serialization=True)
    tokenizer.save_pretrained(str(dest))
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(PlannerTrainConfig, PlannerRecipe, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    raise SystemExit(main())
