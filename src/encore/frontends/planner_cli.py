"""`encore plan|understand|create|format`: the 5 Hz LM planner modes from the command line (SPEC §12).

Each command validates its inputs (user metas, sampling settings, seeds, output name) before any model loads,
then runs the matching `encore.pipeline.planning` mode and prints readable YAML, or one JSON object with
``--json`` (schemas in `planner_schemas`). Heavy modules (torch, the pipeline) are imported inside the command
functions only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from encore.errors import AudioError, CheckpointError, InvalidRequest
from encore.frontends import cli
from encore.frontends.argspec import OptionSpec

OUTPUT_SUFFIXES = (".yaml", ".yml", ".json")
_PLANNER_HINT = "pass --planner PATH, or run `encore download turbo --with-lm` and pass --checkpoint turbo"

# (flag, LmSampling field, type, help)
_LM_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--lm-temperature", "temperature", float, "Softmax temperature; 0 = greedy."),
    ("--lm-top-k", "top_k", int, "Keep the k most likely tokens (0 = off)."),
    ("--lm-top-p", "top_p", float, "Nucleus probability mass (1 = off)."),
    ("--lm-repetition-penalty", "repetition_penalty", float, "Penalty on tokens already in the sequence (1 = off)."),
    ("--lm-cfg-scale", "cfg_scale", float, "Classifier-free guidance scale (<= 1 = off)."),
    ("--lm-negative-prompt", "negative_prompt", str, "Unconditional prompt for CFG."),
    ("--lm-max-new-tokens", "max_new_tokens", int,
     ("Token budget per decode (default: duration*5 + 500 when known, else 4032); a budget that ends before the "
      "metas are complete is an error, one that ends inside the lyrics cuts them.")),
    ("--lm-max-caption-tokens", "max_caption_tokens", int, "Longest caption the planner may write (default: 512)."),
)
_METAS = ("bpm", "duration", "keyscale", "timesignature", "language")
SPECS = [OptionSpec(path=f"sampling.{field}", flags=(flag,), kind="scalar") for flag, field, _, _ in _LM_FLAGS] + [
    OptionSpec(path=name, flags=(f"--{name}",), kind="scalar")
    for name in (*_METAS, "caption", "lyrics", "planner", "seed", "batch", "output", "checkpoint")
] + [OptionSpec(path="seeds", flags=("--seed",), kind="scalar")]
"""Error field → flag, so `encore plan --bpm fast` reports ``--bpm (bpm): ...``."""


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `plan`, `understand`, `codes`, `create` and `format`."""
    p = _command(subparsers, "plan", "Plan a song with the 5 Hz LM: metas, caption and audio codes.",
                 "temperature 0.85, top-p 0.9, CFG 2.0", run_plan)
    p.add_argument("--caption", required=True, help="Song description (@FILE reads a file).")
    p.add_argument("--lyrics", default="", help="Lyrics (@FILE reads a file; default: none).")
    _add_metas(p)
    p.add_argument("--batch", "--batch-size", dest="batch", type=int, default=1, metavar="N",
                   help="Songs to plan: one shared set of metas, N code sequences with seeds seed, seed+1, ...")
    p.add_argument("--metas-only", action="store_true", help="Stop after the metas (no audio codes).")
    p.add_argument("--no-cot-caption", action="store_true",
                   help="Keep the user's caption (the planner does not rewrite it).")
    p.add_argument("--no-cot-language", action="store_true", help="Do not let the planner choose a language.")

    p = _command(subparsers, "understand", "Describe a song: audio -> codes -> caption, lyrics and metas.",
                 "temperature 0.3, no top-p, no CFG", run_understand)
    p.add_argument("audio", type=Path, help="Audio file to describe (at most 10 minutes).")
    _add_encoder_dtype(p)

    p = subparsers.add_parser("codes", help="An audio file's 5 Hz audio codes (no planner needed).",
                              description="An audio file's 5 Hz audio codes: VAE encode (posterior mean) and the "
                              "audio tokenizer, as `understand` reads them. `--audio-codes` of generate/cover "
                              "renders them again; `tokens` is the same codes as <|audio_code_N|> text (the official "
                              "audio_code_string).", epilog=cli.EXIT_CODES_HELP)
    p.add_argument("audio", type=Path, help="Audio file (at most 10 minutes).")
    p.add_argument("--checkpoint", default=None, help="Checkpoint folder or preset whose VAE and audio tokenizer are "
                   f"used. Default: $ENCORE_CHECKPOINT, else {cli.DEFAULT_CHECKPOINT}.")
    _add_device_and_output(p)
    _add_encoder_dtype(p)
    p.set_defaults(func=run_codes, specs=SPECS)

    p = _command(subparsers, "create", "Expand one sentence into a caption, lyrics and metas.",
                 "temperature 0.85, top-p 0.9, no CFG", run_create)
    p.add_argument("query", help='What the song should be, e.g. "a sad piano ballad about rain".')
    p.add_argument("--instrumental", action="store_true", help="Ask for a song without vocals.")
    p.add_argument("--language", default=None, help="Vocal language code to force (e.g. en, zh, ja).")

    p = _command(subparsers, "format", "Rewrite a raw caption and lyrics into the standard form, with metas.",
                 "temperature 0.85, top-p 0.9, no CFG", run_format)
    p.add_argument("--caption", default="", help="Raw caption (@FILE reads a file).")
    p.add_argument("--lyrics", default="", help="Raw lyrics (@FILE reads a file).")
    _add_metas(p)


def _command(subparsers: argparse._SubParsersAction, name: str, summary: str, defaults: str,
             func: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=summary, description=f"{summary} Default sampling: {defaults}.",
                              epilog=cli.EXIT_CODES_HELP)
    g = p.add_argument_group("planner (5 Hz LM) options")
    g.add_argument("--planner", type=Path, default=None,
                   help="5 Hz LM folder (default: the acestep-5Hz-lm-* folder next to the checkpoint).")
    g.add_argument("--checkpoint", default=None,
                   help="Checkpoint folder or preset whose planner (and, for understand, audio encoder) is used. "
                        f"Default: $ENCORE_CHECKPOINT, else {cli.DEFAULT_CHECKPOINT}.")
    for flag, field, tp, text in _LM_FLAGS:
        g.add_argument(flag, dest=f"lm_{field}", type=tp, default=None, help=text)
    g.add_argument("--seed", type=int, default=None, help="Sampling seed (default: random, reported).")
    _add_device_and_output(g)
    p.set_defaults(func=func, specs=SPECS)
    return p


def _add_device_and_output(g: Any) -> None:
    g.add_argument("--device", default="auto", type=cli.device_name,
                   help="cpu, cuda, cuda:1, mps, xpu or auto (default: auto).")
    g.add_argument("--json", action="store_true", help="Print one JSON object instead of YAML.")
    g.add_argument("-o", "--output", type=Path, default=None,
                   help="Also write the result to this file (.yaml, .yml or .json; replaced atomically).")


def _add_encoder_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="Precision of the audio encoder (default: auto = bfloat16 on GPU, float32 on CPU).")


def _add_metas(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("user metas (always win over the planner's)")
    g.add_argument("--bpm", default=None, help="Beats per minute, 30-300.")
    g.add_argument("--keyscale", default=None, help='Key, e.g. "F# minor", "Bb major".')
    g.add_argument("--timesignature", default=None, help="Beats per bar: 2, 3, 4 or 6 (or e.g. 3/4).")
    g.add_argument("--duration", default=None, help="Length in seconds, 1-600.")
    g.add_argument("--language", default=None, help="Vocal language code (e.g. en, zh, ja).")


# --------------------------------------------------------------------------------------------
# Validation (no model, no torch work)
# --------------------------------------------------------------------------------------------


def _text(value: str, field: str) -> str:
    return cli._read_text_file(value[1:], field) if value.startswith("@") else value


def _metas(args: argparse.Namespace) -> Any:
    from encore.pipeline.planning import UserMetas

    return UserMetas.parse(**{name: getattr(args, name) for name in _METAS})


def _sampling(args: argparse.Namespace, base: Any) -> Any:
    """The mode's default `LmSampling` with the given --lm-* flags laid on top (validated)."""
    given = {field: getattr(args, f"lm_{field}") for _, field, _, _ in _LM_FLAGS
             if getattr(args, f"lm_{field}") is not None}
    return dataclasses.replace(base, **given)


def _seeds(args: argparse.Namespace, count: int = 1) -> list[int]:
    from encore.pipeline.request import MAX_BATCH, MAX_SEED

    if not 1 <= count <= MAX_BATCH:
        raise InvalidRequest("batch", f"must be between 1 and {MAX_BATCH}, got {count}")
    seed = args.seed if args.seed is not None else secrets.randbelow(MAX_SEED + 1)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidRequest("seed", f"must be in 0…{MAX_SEED}, got {seed}")
    return [(seed + i) % (MAX_SEED + 1) for i in range(count)]


def _check_output(path: Path | None) -> None:
    if path is None:
        return
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InvalidRequest("output", f"use a {', '.join(OUTPUT_SUFFIXES)} file name, got {path.name!r}")
    cli._check_output_location(path)


def planner_dir(args: argparse.Namespace, lm_dirs: tuple[Path, ...] | None = None) -> Path:
    """--planner, else the checkpoint's `acestep-5Hz-lm-*` folder (the official default one preferred).

    Args:
        lm_dirs: the checkpoint's planner folders when already resolved (understand); None resolves them here.

    Raises:
        InvalidRequest: no --planner and no planner folder next to the checkpoint.
        CheckpointError: --planner names no folder.
    """
    if args.planner is not None:
        if not args.planner.is_dir():
            raise CheckpointError(str(args.planner), "planner folder does not exist")
        return Path(args.planner)
    name = cli.checkpoint_choice(args)
    if lm_dirs is None:
        from encore.pipeline.loading import resolve_checkpoint

        try:
            lm_dirs = resolve_checkpoint(name).lm_dirs
        except CheckpointError as exc:
            raise InvalidRequest("planner", f"no --planner given and checkpoint {name!r} cannot be read ({exc}); "
                                            f"{_PLANNER_HINT}") from None
    if not lm_dirs:
        raise InvalidRequest("planner", f"no 5 Hz LM (acestep-5Hz-lm-*) next to checkpoint {name!r}; {_PLANNER_HINT}")
    from encore.pipeline.presets import DEFAULT_LM_DIR

    return ([d for d in lm_dirs if d.name == DEFAULT_LM_DIR] or list(lm_dirs))[0]


def load_planner(path: Path, device: Any) -> Any:
    """`Planner.from_pretrained` on `device` ("auto" = CUDA, else MPS, else CPU; the planner's own dtype)."""
    from encore.models.planner import Planner
    from encore.pipeline.loading import resolve_device

    return Planner.from_pretrained(path, device=resolve_device(device))


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def run_plan(args: argparse.Namespace) -> int:
    """`encore plan`: phase 1 (CoT metas) once, phase 2 (audio codes) per seed."""
    from encore.pipeline import planning

    caption, lyrics = _text(args.caption, "caption"), _text(args.lyrics, "lyrics")
    if not caption.strip():
        raise InvalidRequest("caption", "must not be empty")
    metas, sampling = _metas(args), _sampling(args, planning.PLAN_SAMPLING)
    seeds = _seeds(args, args.batch)
    _check_output(args.output)
    planner = load_planner(planner_dir(args), args.device)
    plans = planning.plan(planner, caption, lyrics, metas=metas, sampling=sampling, seeds=seeds,
                          use_cot_caption=not args.no_cot_caption, use_cot_language=not args.no_cot_language,
                          generate_codes=not args.metas_only)
    return emit(args, {"plans": [p.to_dict() for p in plans]})


def run_understand(args: argparse.Namespace) -> int:
    """`encore understand`: audio → VAE latents → 5 Hz codes → the planner's description."""
    from encore.pipeline import planning
    from encore.pipeline.loading import resolve_checkpoint
    from encore.pipeline.pipeline import Pipeline

    sampling = _sampling(args, planning.UNDERSTAND_SAMPLING)
    (seed,) = _seeds(args)
    _check_output(args.output)
    if not args.audio.is_file():
        raise AudioError(str(args.audio), "file not found")
    name = cli.checkpoint_choice(args)
    lm = planner_dir(args, resolve_checkpoint(name).lm_dirs)
    pipeline = Pipeline.from_pretrained(name, device=args.device, dtype=args.dtype)
    codes = pipeline.audio_codes(args.audio)
    planner = load_planner(lm, pipeline.device)
    result = planning.understand(planner, codes, sampling=sampling, seed=seed)
    return emit(args, {"source": str(args.audio), "seed": seed, "codes": codes, **result.to_dict()})


def run_codes(args: argparse.Namespace) -> int:
    """`encore codes`: audio → VAE latents → 5 Hz codes (no planner)."""
    from encore.pipeline.pipeline import Pipeline
    from encore.pipeline.request import audio_codes_text

    _check_output(args.output)
    if not args.audio.is_file():
        raise AudioError(str(args.audio), "file not found")
    pipeline = Pipeline.from_pretrained(cli.checkpoint_choice(args), device=args.device, dtype=args.dtype)
    codes = pipeline.audio_codes(args.audio)
    return emit(args, {"source": str(args.audio), "seconds": len(codes) / 5, "codes": codes,
                       "tokens": audio_codes_text(codes)})


def run_create(args: argparse.Namespace) -> int:
    """`encore create`: one sentence → caption, lyrics and metas."""
    from encore.pipeline import planning

    query = args.query  # no @FILE here: a sentence may well start with "@"
    language = planning.UserMetas.parse(language=args.language).language
    sampling = _sampling(args, planning.WRITE_SAMPLING)
    (seed,) = _seeds(args)
    _check_output(args.output)
    planner = load_planner(planner_dir(args), args.device)
    idea = planning.create_sample(planner, query, instrumental=args.instrumental, language=language,
                                  sampling=sampling, seed=seed)
    return emit(args, {"seed": seed, **idea.to_dict()})


def run_format(args: argparse.Namespace) -> int:
    """`encore format`: raw caption and lyrics → the standard form, with metas."""
    from encore.pipeline import planning

    caption, lyrics = _text(args.caption, "caption"), _text(args.lyrics, "lyrics")
    if not caption.strip() and not lyrics.strip():
        raise InvalidRequest("caption", "give --caption and/or --lyrics to format")
    metas, sampling = _metas(args), _sampling(args, planning.WRITE_SAMPLING)
    (seed,) = _seeds(args)
    _check_output(args.output)
    planner = load_planner(planner_dir(args), args.device)
    result = planning.format_sample(planner, caption, lyrics, metas=metas, sampling=sampling, seed=seed)
    return emit(args, {"seed": seed, **result.to_dict()})


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def to_yaml(doc: dict[str, Any]) -> str:
    """Readable YAML: keys in order, multi-line text (lyrics, CoT) as literal blocks, code lists inline."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, text)
    return str(yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=None,
                         width=100))


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after a successful replace; a failed write leaves nothing


def emit(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    """Write -o (YAML or JSON by suffix) and print the result: one JSON object with --json, else YAML."""
    if args.output is not None:
        as_json = args.output.suffix.lower() == ".json"
        _write_atomic(args.output, json.dumps(doc, indent=2, ensure_ascii=False) + "\n" if as_json else to_yaml(doc))
        doc = {**doc, "output": str(args.output)}
    if args.json:
        print(json.dumps({"ok": True, **doc}, ensure_ascii=False))
    elif args.output is not None:
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(to_yaml(doc))
    return cli.EXIT_OK
