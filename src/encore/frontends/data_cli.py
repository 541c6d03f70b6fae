"""`encore data build`: render the labelled training corpus (`encore.data.corpus`).

The corpus is defined by its seed and recipe: clip i depends only on (seed, i, recipe), so a build that was
interrupted, or asked for more clips later, renders only what is missing. Heavy modules (music21, FluidSynth)
are imported inside the command function only.
"""

from __future__ import annotations

import argparse
import json
import logging

from encore.errors import InvalidRequest
from encore.frontends import cli

# build_corpus argument → the flag that sets it, so an error names what the user typed.
_FLAGS = {"num_clips": "--clips", "hours": "--hours", "clip_seconds": "--clip-seconds", "workers": "--workers",
          "out_dir": "OUT_DIR"}  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data build`."""
    data = subparsers.add_parser("data", help="Render the labelled training corpus (the embedded model's data).")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", parser_class=type(data))
    p = sub.add_parser(
        "build", help="Render clips with exact labels (bpm, key, metre, instruments, style) and per-stem audio.",
        description="Renders clips 0..N-1 of the corpus defined by --seed into OUT_DIR: music21 chorales and "
                    "ABC folk tunes, MMA grooves over chord progressions and a procedural band, re-timed and "
                    "transposed, rendered by FluidSynth with General MIDI soundfonts (`make install-dev` "
                    "installs them). Each clip gets mix.flac, stems/<track>.flac, clip.mid and labels.json; "
                    "manifest.jsonl lists them. Clips already present are skipped, so an interrupted build "
                    "resumes where it stopped; a folder built with another seed or clip length is refused.",
        epilog=cli.EXIT_CODES_HELP)  # fmt: skip
    p.add_argument("out_dir", metavar="OUT_DIR", help="Corpus folder (created if needed).")
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--clips", type=int, default=None, metavar="N", help="Number of clips.")
    size.add_argument("--hours", type=float, default=None, help="Total audio length instead of --clips.")
    p.add_argument("--seed", type=int, default=0, help="Corpus seed (default: 0). The embedded model used 1.")
    p.add_argument("--clip-seconds", type=float, default=10.0, help="Length of every clip (default: 10).")
    p.add_argument("--workers", type=int, default=1, help="Rendering processes (default: 1).")
    p.add_argument("--quiet", action="store_true", help="No progress lines on stderr.")
    p.add_argument("--json", action="store_true", help="Print the summary as JSON on stdout.")
    p.set_defaults(func=run_build)
    data.set_defaults(func=lambda args: cli.show_help(data))


def run_build(args: argparse.Namespace) -> int:
    from encore.data.corpus import build_corpus

    if not args.quiet:  # the build logs a line every 50 clips; the CLI's default level would hide it
        logging.getLogger("encore.data.corpus").setLevel(logging.INFO)
    try:
        summary = build_corpus(args.out_dir, num_clips=args.clips, hours=args.hours, seed=args.seed,
                               workers=args.workers, clip_seconds=args.clip_seconds)  # fmt: skip
    except InvalidRequest as exc:
        flag = _FLAGS.get(exc.field or "")
        if flag is None:
            raise
        raise InvalidRequest(flag, exc.message) from exc
    summary = {"corpus": str(args.out_dir), **summary}
    if args.json:
        print(json.dumps(summary, indent=1))
    else:
        print(f"{args.out_dir}: {summary['clips']} clips ({summary['rendered']} rendered, {summary['skipped']} "
              f"already there), {summary['audio_seconds'] / 3600:.2f} h of audio rendered in "
              f"{summary['wall_seconds']:.0f} s")  # fmt: skip
    return cli.EXIT_OK
