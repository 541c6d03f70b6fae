"""`encore demo`, `encore download` and `encore convert`: the commands around generation.

`demo` renders a short song end to end with no download: with the small embedded model bundled in the package,
or, when this installation lacks it, with a tiny random-weight checkpoint written to the cache, and then it says
so loudly (the audio is noise, not music). `download` fetches
official checkpoints with file verification; `convert` rewrites a checkpoint between the official and diffusers
layouts through the validated loader. Heavy modules are imported inside the command functions only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from encore.errors import InvalidRequest
from encore.frontends import cli

DEMO_CAPTION = "upbeat synth-pop with punchy drums, bright arpeggios and a catchy lead"
DEMO_DURATION_S = 10.0
DEMO_BPM = 120
"""The demo's tempo: written into the metas, and into beat hints for a model trained with them."""
DEMO_KEY = "A minor"
"""The demo's key: written into the metas, and into the hints of a model trained with key hints."""
DEMO_SEED = 42
RANDOM_MODEL_NOTICE = (
    "NOTE: the built-in embedded model is not bundled with this installation, so `encore demo` runs a tiny model "
    "with RANDOM weights (written to {path}), not a trained model: the audio is noise, not music. It proves the "
    "whole pipeline works on this machine. For real songs: `encore download turbo`, then "
    "`encore generate --checkpoint turbo --caption ...`."
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `demo`, `download` and `convert`."""
    p = subparsers.add_parser("demo", help="Generate a short demo song with no download (built-in embedded model).",
                              description=__doc__, epilog=cli.EXIT_CODES_HELP)
    p.add_argument("--caption", default=DEMO_CAPTION, help="Caption of the demo song.")
    p.add_argument("--duration", type=float, default=DEMO_DURATION_S, metavar="SECONDS",
                   help=f"Length in seconds (default: {DEMO_DURATION_S:g}).")
    p.add_argument("--seed", type=int, default=DEMO_SEED, help=f"Seed (default: {DEMO_SEED}).")
    p.add_argument("--bpm", type=int, default=DEMO_BPM, help=f"Tempo, 30-300 (default: {DEMO_BPM}).")
    p.add_argument("--keyscale", default=DEMO_KEY, help=f'Key, e.g. "F# minor" (default: {DEMO_KEY}).')
    p.add_argument("--variant", default=None, help=cli.VARIANT_HELP)
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="Where the random fallback checkpoint is kept when the embedded model is not bundled "
                        "(default: $ENCORE_CACHE_DIR or ~/.cache/encore).")
    p.add_argument("-o", "--output", type=Path, default=Path("encore-demo.flac"),
                   help="Output file (default: encore-demo.flac).")
    p.add_argument("--json", action="store_true", help="Print a JSON report on stdout.")
    p.add_argument("-q", "--quiet", action="store_true", help="No progress bar.")
    p.set_defaults(func=run_demo)

    p = subparsers.add_parser("download", help="Download official checkpoints (verified) from the Hugging Face hub.",
                              epilog=cli.EXIT_CODES_HELP)
    p.add_argument("model", nargs="?", default="turbo",
                   help="Preset (turbo, base, sft, xl-turbo, ...) or hub repo id owner/name (default: turbo).")
    p.add_argument("--dir", type=Path, default=None,
                   help="Download root (default: $ENCORE_CHECKPOINT_DIR or ~/.cache/encore/checkpoints).")
    p.add_argument("--revision", default=None, help="Branch, tag or commit of the repo holding the DiT.")
    p.add_argument("--with-lm", action="store_true", help="Also fetch the default 5 Hz planner LM.")
    p.add_argument("--verify", choices=["sha256", "size", "none"], default="sha256",
                   help="File verification after download (default: sha256).")
    p.set_defaults(func=run_download)

    p = subparsers.add_parser("convert", help="Convert a checkpoint between the official and diffusers layouts.",
                              epilog=cli.EXIT_CODES_HELP)
    p.add_argument("source", type=Path, help="Checkpoint folder of either layout.")
    p.add_argument("dest", type=Path, help="Destination folder (must not exist yet).")
    p.add_argument("--to", choices=["official", "diffusers"], default="official", help="Target layout.")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16",
                   help="Precision of the written weights (default: bfloat16, as the official files).")
    p.set_defaults(func=run_convert)


def cache_dir(explicit: Path | None) -> Path:
    if explicit is not None:
        return explicit
    env = os.environ.get("ENCORE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "encore"


def run_demo(args: argparse.Namespace) -> int:
    from encore.pipeline.demo import demo_model
    from encore.pipeline.output import output_paths, write_outputs
    from encore.pipeline.pipeline import Pipeline
    from encore.pipeline.request import GenerationRequest, TextInputs

    if args.output.suffix.lower() not in cli.FORMATS_BY_SUFFIX:
        raise InvalidRequest("--output", f"unknown audio suffix {args.output.suffix!r}")
    fmt = cli.FORMATS_BY_SUFFIX[args.output.suffix.lower()]
    text = TextInputs(caption=args.caption, duration_s=args.duration, bpm=args.bpm, keyscale=args.keyscale)
    request = GenerationRequest(text=text, seeds=(args.seed,), output=_output_options(fmt))
    model = demo_model(cache_dir(args.cache_dir))
    notice = RANDOM_MODEL_NOTICE.format(path=model.path) if model.random else None
    if notice is not None:
        sys.stderr.write(notice + "\n")
    cli._check_output_location(args.output)
    # The random model is tiny and CPU-only by design; the embedded one uses the best device, as `generate`.
    device, dtype = ("cpu", "float32") if model.random else ("auto", "auto")
    variant = None if model.random else args.variant  # the random fallback has one DiT
    pipeline = Pipeline.from_pretrained(model.path, device=device, dtype=dtype, variant=variant)
    bar = cli.ProgressBar(sys.stderr, enabled=not (args.quiet or args.json))
    try:
        result = pipeline.generate(request, progress=bar)
    finally:
        bar.close()
    if model.random:
        result.params["model"]["note"] = "random tiny demo model, not trained weights"
    written = write_outputs(result, output_paths(args.output, kind="text2music", seeds=result.seeds, fmt=fmt))
    if args.json:
        print(json.dumps({"ok": True, "outputs": [str(p) for p in written], "random_model": model.random,
                          "checkpoint": str(model.path), "notice": notice, "timings_s": result.timings_s},
                         indent=2))
    elif model.random:
        print(f"wrote {written[0].resolve()} ({args.duration:g} s, random tiny model: noise, not music)")
    else:
        print(f"wrote {written[0].resolve()} ({args.duration:g} s, built-in embedded model from {model.path})")
    return cli.EXIT_OK


def _output_options(fmt: str) -> Any:
    from encore.pipeline.request import OutputOptions

    return OutputOptions(format=fmt)  # type: ignore[arg-type]


def run_download(args: argparse.Namespace) -> int:
    from encore.pipeline.download import download

    path = download(args.model, args.dir, revision=args.revision, include_lm=args.with_lm, verify=args.verify)
    print(f"downloaded {args.model} to {path}")
    print(f"use it with: encore generate --checkpoint {path} --caption ...")
    return cli.EXIT_OK


def run_convert(args: argparse.Namespace) -> int:
    from encore.pipeline.loading import load_components
    from encore.pipeline.saving import save_components

    if args.dest.exists():
        raise InvalidRequest("dest", f"{args.dest} already exists; choose a new folder")
    components = load_components(args.source, device="cpu", dtype=args.dtype)
    out = save_components(components, args.dest, layout=args.to, dtype=components.dtype)
    print(f"wrote {args.to} checkpoint to {out}")
    return cli.EXIT_OK
