"""`encore eval`: score a checkpoint on the held-out prompt set against the corpus renders and a random model.

Writes ``eval.json`` and ``eval.md`` (the model-card table) into ``--out``. Each system in ``--systems`` is
``VARIANT``, ``VARIANT-STEPS`` or ``VARIANT-STEPS@SHIFT``, optionally followed by ``:ode`` or ``:sde``, then
``:gSCALE``, then ``:no-guide-hints`` (``base-50``, ``turbo-8``, ``turbo-8@2``, ``turbo-8:sde``, ``base-50:g4``,
``base-50:no-guide-hints``); ``random`` is a random-weight model with the checkpoint's geometry (the floor).
``--write-prompts PATH`` regenerates the prompt set instead. Heavy modules (torch, the pipeline) are imported inside the command function only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from encore.errors import InvalidRequest
from encore.frontends import cli

DEFAULT_SYSTEMS = ("base-50", "turbo-8", "random")
DEFAULT_OUT = Path("eval-out")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `eval`."""
    p = subparsers.add_parser("eval", help="Evaluate a checkpoint on the held-out prompts (tempo, key, "
                              "instruments, Fréchet distance).", description=__doc__, epilog=cli.EXIT_CODES_HELP)  # fmt: skip
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="Checkpoint root (official layout). Default: $ENCORE_CHECKPOINT, else the bundled embedded model.",
    )
    p.add_argument(
        "--corpus",
        type=Path,
        default=None,
        help="Built training corpus (`encore data build`): trains the instrument probe, FD reference.",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"Report folder (default: {DEFAULT_OUT}).")
    p.add_argument("--prompts", type=Path, default=None, help="Prompt set JSON (default: the packaged one).")
    p.add_argument(
        "--systems",
        nargs="+",
        default=list(DEFAULT_SYSTEMS),
        metavar="SYSTEM",
        help=f"Rows to evaluate (default: {' '.join(DEFAULT_SYSTEMS)}).",
    )
    p.add_argument("--no-renders", action="store_true", help="Skip the ceiling row (needs FluidSynth).")
    p.add_argument(
        "--no-reconstruction",
        action="store_true",
        help="Skip the VAE-ceiling row (the renders through the model's VAE).",
    )
    p.add_argument(
        "--sequential",
        action="store_true",
        help="Load and run one system at a time (least memory). By default the model systems are loaded "
        "together and called prompt by prompt in turn, so their timings share the machine's conditions.",
    )
    p.add_argument("--probe", type=Path, default=None, help="Saved probe to use instead of training one.")
    p.add_argument("--limit", type=int, default=None, help="Only the first N prompts (quick check).")
    p.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="Override every prompt's duration (quick check).",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="Seed of prompt 0; prompt k uses seed + k (default: 0)."
    )
    p.add_argument("--save-audio", action="store_true", help="Keep the generated clips as FLAC under --out.")
    p.add_argument("--max-corpus-clips", type=int, default=None, help="Read only the first N corpus clips.")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, mps or auto (default: auto).")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="Model precision (default: auto).",
    )
    p.add_argument(
        "--vae-dtype",
        default=None,
        choices=["float32", "bfloat16", "float16"],
        help="VAE precision of the model rows and the VAE round trip (default: --dtype).",
    )
    p.add_argument(
        "--write-prompts",
        type=Path,
        default=None,
        metavar="PATH",
        help="Regenerate the prompt set into PATH and exit (needs the corpus tools).",
    )
    p.add_argument(
        "--num-prompts", type=int, default=64, help="Prompts written by --write-prompts (default: 64)."
    )
    p.add_argument(
        "--prompt-set-seed",
        type=int,
        default=None,
        metavar="SEED",
        help="Corpus seed of the set --write-prompts renders (default: the held-out evaluation seed). Write a "
        "validation set with another unused seed to choose checkpoints without touching the evaluation prompts.",
    )
    p.add_argument("--json", action="store_true", help="Print the report as JSON on stdout.")
    p.set_defaults(func=run_eval_command)


def _factory(args: argparse.Namespace, checkpoint: str) -> Any:
    """``factory(variant) -> Pipeline``; checks that base/turbo rows really load a base/turbo model."""
    from encore.eval.run import random_pipeline_like
    from encore.pipeline.loading import load_pipeline

    def make(variant: str) -> Any:
        if variant == "random":
            return random_pipeline_like(checkpoint, args.out / "random-checkpoint", device=args.device,
                                        dtype=args.dtype)  # fmt: skip
        pipeline = load_pipeline(checkpoint, variant=variant, device=args.device, dtype=args.dtype,
                                 vae_dtype=args.vae_dtype)
        loaded = pipeline.components.variant
        if variant in ("base", "turbo") and loaded.is_turbo != (variant == "turbo"):
            raise InvalidRequest("--systems", f"asked for {variant} but {checkpoint} loads {loaded.name}; pass the "
                                              "checkpoint root holding both DiT folders")  # fmt: skip
        return pipeline

    return make


def run_eval_command(args: argparse.Namespace) -> int:
    from encore.eval.prompts import EVAL_SEED, load_prompt_set, make_prompt_set, save_prompt_set
    from encore.eval.run import parse_system, run_eval

    if args.prompt_set_seed is not None and args.write_prompts is None:
        raise InvalidRequest("--prompt-set-seed", "only used with --write-prompts")
    if args.write_prompts is not None:
        seed = EVAL_SEED if args.prompt_set_seed is None else args.prompt_set_seed
        path = save_prompt_set(make_prompt_set(args.num_prompts, seed=seed), args.write_prompts)
        print(f"wrote {args.num_prompts} prompts (corpus seed {seed}) to {path}")
        return cli.EXIT_OK
    if args.corpus is None:
        raise InvalidRequest("--corpus", "required: the training corpus the instrument probe is trained on")
    if args.limit is not None and args.limit < 1:
        raise InvalidRequest("--limit", f"must be >= 1, got {args.limit}")
    systems = [parse_system(s) for s in args.systems]
    from encore.pipeline.loading import resolve_checkpoint

    checkpoint = cli.checkpoint_choice(args)
    for spec in systems:  # fail (a missing folder, variant or unbundled model) before the probe trains
        resolve_checkpoint(checkpoint, variant=None if spec.is_floor else spec.variant)
    report = run_eval(_factory(args, checkpoint), prompts=load_prompt_set(args.prompts), corpus_dir=args.corpus,
                      out_dir=args.out, systems=systems, include_renders=not args.no_renders,
                      probe_path=args.probe, limit=args.limit, duration_s=args.duration, seed=args.seed,
                      save_audio=args.save_audio, max_corpus_clips=args.max_corpus_clips,
                      include_reconstruction=not args.no_reconstruction,
                      interleave=not args.sequential)  # fmt: skip
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        sys.stdout.write(report.to_markdown())
        print(f"wrote {args.out / 'eval.json'} and {args.out / 'eval.md'}")
    return cli.EXIT_OK
