"""Planner code-phase throughput: tokens/s with and without constrained decoding and LM-head slicing.

Random weights at the tiny test geometry and at the acestep-5Hz-lm-0.6B geometry (official vocab
width 217 204), measured in the same run with the official defaults (CFG 2.0 as one batch of
cond+uncond rows, temperature 0.85, top-p 0.9). `python -m encore.bench_planner` prints a table.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import asdict, dataclass

import torch

from encore.models.planner import Planner
from encore.pipeline import planner_prompts as P
from encore.pipeline.planning import LmSampling, generate_tokens
from encore.pipeline.random_planner import Geometry, build_tokenizer, random_planner
from encore.sampling.constrained import ConstraintSpec

VARIANTS = ("unconstrained", "constrained", "constrained+head_slicing")
_COT = P.format_cot({"bpm": 120, "caption": "An upbeat synth-pop track with bright pads.", "duration": 60,
                     "keyscale": "C major", "language": "en", "timesignature": 4})


@dataclass(frozen=True)
class BenchRow:
    """One measured configuration."""

    geometry: str
    variant: str
    device: str
    dtype: str
    tokens: int
    ms_per_token: float
    tokens_per_s: float
    speedup_vs_unconstrained: float


def _per_token_s(planner: Planner, variant: str, num_tokens: int) -> float:
    """Fastest code-phase decode step in seconds (prefill excluded; the step least slowed by other load)."""
    sampling = LmSampling(use_constrained_decoding=variant != "unconstrained",
                          use_head_slicing=variant.endswith("head_slicing"))
    spec = ConstraintSpec(cot=False, tail="codes", target_codes=num_tokens)
    stamps: list[float] = []
    # Each step already synchronises (sampled ids go to the host), so wall-clock stamps are exact.
    generate_tokens(planner, [P.codes_prompt("An upbeat synth-pop track.", "[Instrumental]", _COT)],
                    uncond_prompts=[P.codes_uncond_prompt("", "[Instrumental]", None)],
                    specs=None if variant == "unconstrained" else [spec], sampling=sampling, seeds=[0],
                    max_new_tokens=num_tokens, on_step=lambda _: stamps.append(time.perf_counter()))
    return min(b - a for a, b in itertools.pairwise(stamps))


def bench_planner(*, geometries: tuple[Geometry, ...] = ("tiny", "0.6b"), tokens: dict[str, int] | None = None,
                  device: str = "cpu", dtype: torch.dtype | None = None) -> list[BenchRow]:
    """Measure code-phase decoding speed per geometry and variant.

    Args:
        geometries: planner shapes to build with random weights.
        tokens: decode steps per geometry (defaults: tiny 64, 0.6b 12 on CPU / 128 on CUDA).
        device: "cpu" or "cuda".
        dtype: weights dtype (default fp32 on CPU, bf16 on CUDA).

    Returns:
        One row per (geometry, variant); time per token is the fastest step's.
    """
    dev = torch.device(device)
    dt = dtype or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    defaults = {"tiny": 64, "0.6b": 128 if dev.type == "cuda" else 12}
    tokens = {**defaults, **(tokens or {})}
    tokenizer = build_tokenizer()
    rows: list[BenchRow] = []
    for geometry in geometries:
        planner = random_planner(geometry=geometry, device=dev, dtype=dt, tokenizer=tokenizer)
        n = max(3, tokens[geometry])
        per_token: dict[str, float] = {}
        for variant in VARIANTS:
            _per_token_s(planner, variant, 3)  # warm-up (allocations, tables, kernels)
            per_token[variant] = _per_token_s(planner, variant, n)
        for variant in VARIANTS:
            s = max(per_token[variant], 1e-9)
            rows.append(BenchRow(geometry, variant, str(dev), str(dt).replace("torch.", ""), n, s * 1e3, 1.0 / s,
                                 per_token["unconstrained"] / s))
        del planner
    return rows


def format_rows(rows: list[BenchRow]) -> str:
    """A plain-text table of `rows`."""
    head = f"{'geometry':8} {'variant':26} {'device':6} {'dtype':9} {'tokens':>6} {'ms/token':>9} " \
           f"{'tok/s':>8} {'speedup':>8}"
    lines = [head]
    for r in rows:
        lines.append(f"{r.geometry:8} {r.variant:26} {r.device:6} {r.dtype:9} {r.tokens:6d} {r.ms_per_token:9.2f} "
                     f"{r.tokens_per_s:8.1f} {r.speedup_vs_unconstrained:7.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--geometry", action="append", choices=["tiny", "0.6b"])
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    args = parser.parse_args(argv)
    rows = bench_planner(geometries=tuple(args.geometry or ("tiny", "0.6b")), device=args.device)
    if args.json:
        import json
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(format_rows(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
