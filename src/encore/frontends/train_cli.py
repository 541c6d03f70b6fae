"""CLI command groups for personalisation: `encore dataset build DIR` and `encore train lora`.

`register(subparsers)` adds both groups. Handlers import the library lazily (this module never imports torch).
`train lora --nproc N` re-launches the recipe under `torch.distributed.run` (DDP; gloo on CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from encore.frontends import cli

log = logging.getLogger("encore.cli")

EXIT_OK, EXIT_ERROR = 0, 1
OTHER_RECIPES: dict[str, str] = {
    "dit": "Train the DiT (embedded model) from cached latents.",
    "vae": "Train the VAE.",
    "distill": "Distil a guided DiT into a few-step (turbo) student.",
    "planner": "Train the 5 Hz LM planner.",
}
"""Recipes run as `encore train NAME [--config FILE] KEY=VALUE ...` -> `encore.training.recipes.NAME.main(argv)`."""
TRAIN_OPTIONS = ("checkpoint", "dataset", "output_dir", "resume", "device", "precision", "rank", "alpha",
                 "max_steps", "batch_size", "learning_rate", "seed")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `dataset build` and `train lora`."""
    dataset = subparsers.add_parser("dataset", help="Build a training dataset from a folder of songs.")
    dsub = dataset.add_subparsers(dest="dataset_command", metavar="COMMAND", parser_class=type(dataset))
    _register_build(dsub)
    dataset.set_defaults(func=lambda args: cli.show_help(dataset))
    train = subparsers.add_parser("train", help="Fine-tune the model (LoRA).")
    tsub = train.add_subparsers(dest="train_command", metavar="RECIPE", parser_class=type(train))
    _register_lora(tsub)
    for name, summary in OTHER_RECIPES.items():
        p = tsub.add_parser(name, help=summary,
                            description=f"{summary} Same as `python -m encore.training.recipes.{name}`.")
        p.add_argument("--config", default=None, help="TOML config file.")
        p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Config fields (TOML value syntax).")
        p.set_defaults(func=run_other_recipe, recipe=name)
    train.set_defaults(func=lambda args: cli.show_help(train))


# --------------------------------------------------------------------------------------------- dataset build


def _register_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build", help="Scan audio + sidecars/CSV, auto-label, write a reviewable JSON manifest.",
        description="Scans DIR (nested) for wav/flac/mp3/ogg, reads `<song>.caption.txt`, `<song>.lyrics.txt` / "
                    "`<song>.txt` and an optional CSV, estimates tempo and key, and writes a JSON manifest. Bad "
                    "files are listed in the summary and skipped (exit 0). With --checkpoint the songs are also "
                    "encoded into cached latents for training.")
    p.add_argument("dir", type=Path, help="Folder with the songs.")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="Manifest path (default: DIR/encore_dataset.json).")
    p.add_argument("--csv", type=Path, default=None, help="CSV with a `file` column plus caption, lyrics, bpm, "
                   "key, timesignature, language.")
    p.add_argument("--tag", default=None, help="Activation tag added to every caption (e.g. 'mystyle').")
    p.add_argument("--tag-position", choices=["prepend", "append", "replace"], default="prepend")
    p.add_argument("--max-seconds", type=float, default=600.0, help="Skip longer files (default 600).")
    p.add_argument("--min-seconds", type=float, default=1.0, help="Skip shorter files (default 1).")
    p.add_argument("--no-analysis", action="store_true", help="Do not estimate tempo/key from the signal.")
    p.add_argument("--checkpoint", default=os.environ.get("ENCORE_CHECKPOINT"),
                   help="Model checkpoint: also encode latents + conditions for training (default: "
                        "$ENCORE_CHECKPOINT if set, else no preprocessing).")
    p.add_argument("--latents-dir", type=Path, default=None, help="Latent cache folder (default: next to the "
                   "manifest, `latents/`).")
    p.add_argument("--planner", type=Path, default=None, help="Planner (5 Hz LM) folder: label missing caption, "
                   "lyrics and metas with its listener mode (needs --checkpoint).")
    p.add_argument("--device", default="auto", help="Device for preprocessing / the planner.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="Print the summary as JSON on stdout.")
    p.set_defaults(func=run_build)


def run_build(args: argparse.Namespace) -> int:
    """`encore dataset build`: returns 0 when at least one usable file was found (bad files do not fail it)."""
    from encore.data.dataset_builder import DEFAULT_MANIFEST_NAME, BuildOptions, build_dataset, summarize
    from encore.errors import InvalidRequest

    if args.planner is not None and not args.checkpoint:
        raise InvalidRequest("--planner", "the planner listener needs --checkpoint (VAE and audio tokenizer)")
    components = _load_components(args) if args.checkpoint else None
    listener = _planner_listener(args, components) if args.planner is not None else None
    options = BuildOptions(csv_path=args.csv, activation_tag=args.tag, tag_position=args.tag_position,
                           max_seconds=args.max_seconds, min_seconds=args.min_seconds,
                           analyze=not args.no_analysis, listener=listener)
    manifest = build_dataset(args.dir, options, progress=lambda i, n, rel: log.info("[%d/%d] %s", i + 1, n, rel))
    out = args.output or args.dir / DEFAULT_MANIFEST_NAME
    manifest.root = os.path.relpath(args.dir, out.parent)
    manifest.save(out)
    index = None
    if components is not None and manifest.samples:
        from encore.data.preprocess import preprocess_manifest

        index = preprocess_manifest(out, components, args.latents_dir, seed=args.seed,
                                    progress=lambda i, n, sid: log.info("encoding [%d/%d] %s", i + 1, n, sid))
    if args.json:
        print(json.dumps({"manifest": str(out), "latents": str(index) if index else None,
                          "usable": [s.path for s in manifest.samples],
                          "skipped": [{"path": s.path, "reason": s.reason} for s in manifest.skipped],
                          "warnings": manifest.warnings}, indent=2))
    else:
        print(summarize(manifest, out))
        if index is not None:
            print(f"Latents: {index}")
    if not manifest.samples:
        sys.stderr.write(f"encore dataset build: error: no usable audio file in {args.dir}\n")
        return EXIT_ERROR
    return EXIT_OK


def _load_components(args: argparse.Namespace) -> Any:
    from encore.pipeline.loading import load_components

    return load_components(args.checkpoint, device=args.device, dtype="float32")


def _planner_listener(args: argparse.Namespace, components: Any) -> Any:
    from encore.data.preprocess import PlannerListener
    from encore.models.planner import Planner

    planner = Planner.from_pretrained(args.planner, device=components.device)
    return PlannerListener(components, planner, seed=args.seed)


# --------------------------------------------------------------------------------------------- train lora


def _register_lora(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lora", help="Train a LoRA adapter on the DiT attention from a dataset manifest.",
        description="Trains a LoRA (PEFT layout) from `encore dataset build` output. Options come from --config "
                    "(TOML), then KEY=VALUE overrides, then the flags below. The adapter is exported to "
                    "OUTPUT_DIR/adapter; resumable checkpoints go to OUTPUT_DIR/checkpoints.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="Any LoraTrainConfig field (TOML value syntax).")
    p.add_argument("--config", type=Path, default=None, help="TOML config file (LoraTrainConfig fields).")
    p.add_argument("--dataset", default=None, help="Manifest JSON or latent folder.")
    p.add_argument("--checkpoint", default=os.environ.get("ENCORE_CHECKPOINT"), help="Base model checkpoint.")
    p.add_argument("--output-dir", dest="output_dir", default=None, help="Where checkpoints/adapter/logs go.")
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint folder.")
    p.add_argument("--device", default=None, help="cpu, cuda or auto.")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None)
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--max-steps", dest="max_steps", type=int, default=None)
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--learning-rate", dest="learning_rate", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--nproc", type=int, default=1,
                   help="Processes on this machine (torchrun DDP; gloo on CPU). Multi-node: run "
                        "`torchrun ... -m encore.training.recipes.lora` yourself.")
    p.set_defaults(func=run_train_lora)


def run_train_lora(args: argparse.Namespace) -> int:
    """`encore train lora`: validates the config here, then trains in-process or under torchrun."""
    from encore.training.config import LoraTrainConfig, load_config

    values = {k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k, None) is not None}
    config = load_config(LoraTrainConfig, args.config, args.overrides, **values)
    if args.nproc > 1:
        return _launch_distributed(args, values)
    from encore.training.recipes.lora import run

    result = run(config)
    print(json.dumps({"steps": result.steps, "final_loss": result.losses[-1][1] if result.losses else None,
                      "adapter": str(result.adapter_dir), "checkpoint": str(result.checkpoint)}))
    return EXIT_OK


def run_other_recipe(args: argparse.Namespace) -> int:
    """`encore train NAME ...`: hands the arguments to that recipe module's `main(argv)`."""
    import importlib

    module = importlib.import_module(f"encore.training.recipes.{args.recipe}")
    argv = (["--config", args.config] if args.config else []) + list(args.overrides)
    return int(module.main(argv))


def _launch_distributed(args: argparse.Namespace, values: dict[str, Any]) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "encore.training.recipes.lora"]
    if args.config is not None:
        cmd += ["--config", str(args.config)]
    cmd += list(args.overrides) + [f"{k}={json.dumps(v)}" for k, v in values.items()]
    log.info("launching: %s", " ".join(cmd))
    return subprocess.call(cmd)
