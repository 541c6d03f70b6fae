"""The `encore` command line: one subcommand per task plus demo/download/convert.

Generation options are derived from `GenerationRequest` (see `frontends/argspec.py`), so flags, types,
defaults and help text exist once. Command groups register themselves through one `register(subparsers)`
function each, listed in `COMMAND_GROUPS`. This module never imports torch at import time: the pipeline is
imported only when a command actually generates.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from encore import __version__
from encore.errors import AudioError, Cancelled, CheckpointError, EncoreError, InvalidRequest, NumericalError
from encore.frontends import argspec

log = logging.getLogger("encore.cli")

COMMAND_GROUPS: tuple[str, ...] = (
    "encore.frontends.cli:register_tasks",
    "encore.frontends.batch_cli:register",
    "encore.frontends.cli_tools:register",
    "encore.frontends.server.cli:register",
    "encore.frontends.ui.cli:register",
    "encore.frontends.train_cli:register",
    "encore.frontends.eval_cli:register",
    "encore.frontends.data_cli:register",
    "encore.frontends.planner_cli:register",
)
"""``module:function`` entries, each adding subcommands to the parser. Add a line to add a command group."""

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_AUDIO, EXIT_CHECKPOINT, EXIT_NUMERICAL, EXIT_CANCELLED = 0, 1, 2, 3, 4, 5, 130
EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 other error, 2 invalid arguments or request, 3 unreadable/unsuitable audio file, "
    "4 checkpoint problem, 5 NaN/Inf in the result, 130 interrupted. Errors print one line on stderr and "
    "leave no partial output file."
)

TASK_COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("text2music", "Generate a song from a caption and lyrics."),
    "cover": ("cover", "Re-render a source song in a new style (keeps its structure/melody)."),
    "repaint": ("repaint", "Regenerate a time window of a source song; the rest stays bit-identical."),
    "extend": ("extend", "Add seconds before or after a source song."),
    "extract": ("extract", "Extract one track (stem) from a source song (base model)."),
    "lego": ("lego", "Generate one track in the context of a source song (base model)."),
    "complete": ("complete", "Add the named tracks around a partial source track (base model)."),
}

DEFAULT_CHECKPOINT = "embedded"
"""Loaded when neither --checkpoint nor $ENCORE_CHECKPOINT is given: the small model bundled in the package
(`encore.pipeline.presets.EMBEDDED_NAME`); when it is not bundled, loading fails with a one-line hint, never a
fallback to random weights."""
FORMATS_BY_SUFFIX = {".flac": "flac", ".wav": "wav", ".mp3": "mp3", ".ogg": "ogg"}


VARIANT_HELP = ("Which DiT of a checkpoint root holding several: a folder name or preset (turbo, base, ...). "
                "Default: the turbo when there is one (the bundled model has turbo and base).")


class CliParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (plus a hint) and exit with EXIT_USAGE."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# --------------------------------------------------------------------------------------------
# Task commands
# --------------------------------------------------------------------------------------------


def register_tasks(subparsers: argparse._SubParsersAction) -> None:
    """Add `generate`, `cover`, `repaint`, `extend`, `extract`, `lego`, `complete`."""
    from encore.pipeline.request import TASK_KINDS, GenerationRequest

    for command, (kind, summary) in TASK_COMMANDS.items():
        task_cls = TASK_KINDS[kind]
        p = subparsers.add_parser(command, help=summary, description=f"{summary} {task_cls.__doc__ or ''}".strip(),
                                  epilog=EXIT_CODES_HELP)
        task_group = p.add_argument_group(f"{command} options")
        specs = argspec.add_dataclass_options(task_group, task_cls, "task", positional=frozenset({"task.source"}))
        for title, path in (("song", "text"), ("diffusion", "diffusion"), ("planner (5 Hz LM)", "planner"),
                            ("output", "output")):
            group = p.add_argument_group(f"{title} options")
            specs += _request_group_options(group, GenerationRequest, path)
        group = p.add_argument_group("request options")
        specs += argspec.add_dataclass_options(
            group, GenerationRequest, skip=frozenset({"task", "text", "diffusion", "planner", "output"}))
        add_run_options(p)
        p.add_argument("--request", metavar="FILE.json", type=Path,
                       help="Load a request (JSON, same schema as --print-request); flags override its fields.")
        p.add_argument("--print-request", action="store_true",
                       help="Print the request as JSON and exit without loading a model.")
        p.set_defaults(func=run_task, task_kind=kind, specs=specs)


def _request_group_options(group: argparse._ArgumentGroup, request_cls: type, path: str) -> list[argspec.OptionSpec]:
    import dataclasses
    import typing

    field = next(f for f in dataclasses.fields(request_cls) if f.name == path)
    tp, _ = argspec.strip_optional(typing.get_type_hints(request_cls)[field.name])
    return argspec.add_dataclass_options(group, tp, path, prefix="lm-" if path == "planner" else "")


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that loads a model and writes audio."""
    g = p.add_argument_group("run options")
    g.add_argument("--checkpoint", default=None,
                   help="Checkpoint folder (official or diffusers layout) or a downloaded preset name (turbo, base, "
                        "...) or `embedded`. Default: $ENCORE_CHECKPOINT, else the small embedded model bundled "
                        "with Encore (official weights: `encore download turbo`, then --checkpoint turbo).")
    g.add_argument("--variant", default=None, help=VARIANT_HELP)
    g.add_argument("-o", "--output", type=Path, default=None,
                   help="Output file (format from its suffix; an existing file is replaced atomically) or an "
                        "existing folder. Batches add -1, -2, ... Default: ./encore-<task>-<seed>.<format>.")
    g.add_argument("--planner", type=Path, default=None,
                   help="5 Hz LM folder for --think (default: the acestep-5Hz-lm-* folder next to the checkpoint).")
    g.add_argument("--device", default="auto", type=device_name,
                   help="cpu, cuda, cuda:1, mps, xpu or auto (default: auto).")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="Model precision (default: auto = bfloat16 on GPU, float32 on CPU).")
    g.add_argument("--vae-dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="VAE precision (default: --dtype). bfloat16 decodes the embedded model 1.5x faster on a CPU "
                        "with native bf16 (AVX512-BF16/AMX), at a small cost in fidelity (docs/performance.md).")
    g.add_argument("--json", action="store_true", help="Print a JSON report (paths, seeds, parameters) on stdout.")
    g.add_argument("-q", "--quiet", action="store_true", help="No progress bar.")


def device_name(text: str) -> str:
    """argparse `type=` for --device: checked here so a typo is a usage error, not a torch traceback."""
    if not re.fullmatch(r"auto|cpu|mps|(cuda|xpu)(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda, cuda:N, mps, xpu or auto")
    return text


def build_request_dict(args: argparse.Namespace) -> dict[str, Any]:
    """The request as a JSON-able dict: --request file, then flags, then the subcommand's task kind."""
    base: dict[str, Any] = {}
    if args.request is not None:
        try:
            base = json.loads(args.request.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InvalidRequest("--request", f"cannot read {args.request}: {exc}") from None
        if isinstance(base, dict) and "request" in base and isinstance(base["request"], dict):
            base = base["request"]  # a sidecar written by `encore`: reuse its request
        if not isinstance(base, dict):
            raise InvalidRequest("--request", "must hold a JSON object")
    flags = argspec.collect_request_dict(args, args.specs)
    for key in ("caption", "lyrics"):
        value = flags.get("text", {}).get(key)
        if isinstance(value, str) and value.startswith("@"):
            flags["text"][key] = _read_text_file(value[1:], f"text.{key}")
    data = argspec.deep_merge(base, flags)
    task = data.setdefault("task", {})
    if task.get("kind", args.task_kind) != args.task_kind:
        raise InvalidRequest("task.kind", f"the request file says {task['kind']!r} but the command is {args.command!r}")
    task["kind"] = args.task_kind
    if args.output is not None and args.output.suffix:
        fmt = FORMATS_BY_SUFFIX.get(args.output.suffix.lower())
        if fmt is None and not args.output.is_dir():
            raise InvalidRequest("--output", f"unknown audio suffix {args.output.suffix!r}; use one of "
                                             f"{', '.join(FORMATS_BY_SUFFIX)}")
        out = data.setdefault("output", {})
        if fmt is not None and out.setdefault("format", fmt) != fmt:
            raise InvalidRequest("output.format", f"--format {out['format']} contradicts the output name {args.output}")
    return data


def _read_text_file(path: str, field: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest(field, f"cannot read {path}: {exc}") from None


def run_task(args: argparse.Namespace) -> int:
    """Build the request, load the pipeline, generate and write the files atomically."""
    from encore.pipeline.request import request_from_dict, request_to_dict

    request = request_from_dict(build_request_dict(args))
    if args.print_request:
        print(json.dumps(request_to_dict(request), indent=2, ensure_ascii=False))
        return EXIT_OK
    if args.output is not None:
        _check_output_location(args.output)
    pipeline = load_pipeline(args)
    bar = ProgressBar(sys.stderr, enabled=not (args.quiet or args.json))
    try:
        result = pipeline.generate(request, progress=bar)
    finally:
        bar.close()
    from encore.pipeline.output import output_paths, write_outputs

    paths = output_paths(args.output, kind=args.task_kind, seeds=result.seeds, fmt=request.output.format)
    written = write_outputs(result, paths)
    report(args, result, written)
    return EXIT_OK


def _check_output_location(output: Path) -> None:
    parent = output if output.is_dir() else output.parent
    if not parent.is_dir():
        raise InvalidRequest("--output", f"folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InvalidRequest("--output", f"folder {parent} is not writable")


def checkpoint_choice(args: argparse.Namespace) -> str:
    """--checkpoint, else $ENCORE_CHECKPOINT, else `DEFAULT_CHECKPOINT` (every command resolves it this way)."""
    return str(args.checkpoint or os.environ.get("ENCORE_CHECKPOINT") or DEFAULT_CHECKPOINT)


def load_pipeline(args: argparse.Namespace) -> Any:
    """Load the pipeline for --checkpoint/--device/--dtype (imports torch)."""
    from encore.pipeline.pipeline import Pipeline

    return Pipeline.from_pretrained(checkpoint_choice(args), device=args.device, dtype=args.dtype, planner=args.planner,
                                    variant=args.variant, vae_dtype=args.vae_dtype)


def report(args: argparse.Namespace, result: Any, paths: Sequence[Path]) -> None:
    """Tell the user what was written: JSON on stdout with --json, else one line per file."""
    if args.json:
        doc = {
            "ok": True,
            "outputs": [{"path": str(p), "seed": s} for p, s in zip(paths, result.seeds)],
            "sample_rate": result.sample_rate,
            "params": result.params,
            "timings_s": result.timings_s,
        }
        print(json.dumps(doc, indent=2, ensure_ascii=False, default=str))
        return
    for p, s in zip(paths, result.seeds):
        print(f"wrote {p} (seed {s})")


# --------------------------------------------------------------------------------------------
# Progress bar
# --------------------------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress bar on stderr, driven by the pipeline's ``progress(stage, fraction)`` callback."""

    def __init__(self, stream: TextIO, *, enabled: bool = True, width: int = 30) -> None:
        self.stream, self.enabled, self.width = stream, enabled, width
        self._last = self._stage = ""
        self._is_tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, stage: str, fraction: float) -> None:
        if not self.enabled:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        filled = round(fraction * self.width)
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:5.1f}% {stage}"
        if self._is_tty:
            self.stream.write("\r" + line.ljust(len(self._last)))
        elif stage != self._stage:
            self.stream.write(line + "\n")  # not a terminal (log file, CI): one line per stage, not per step
        self.stream.flush()
        self._last, self._stage = line, stage

    def close(self) -> None:
        if self.enabled and self._is_tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def build_parser() -> CliParser:
    """The full parser with every registered command group."""
    parser = CliParser(prog="encore", description="Encore: ACE-Step 1.5 music generation.",
                       epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"encore {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="More log output (-vv for debug).")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CliParser)
    for entry in COMMAND_GROUPS:
        module, _, func = entry.partition(":")
        register: Callable[[argparse._SubParsersAction], None] = getattr(importlib.import_module(module), func)
        register(subparsers)
    return parser


def _exit_code(exc: EncoreError) -> int:
    if isinstance(exc, InvalidRequest):
        return EXIT_USAGE
    if isinstance(exc, AudioError):
        return EXIT_AUDIO
    if isinstance(exc, CheckpointError):
        return EXIT_CHECKPOINT
    if isinstance(exc, NumericalError):
        return EXIT_NUMERICAL
    if isinstance(exc, Cancelled):
        return EXIT_CANCELLED
    return EXIT_ERROR


def _error_text(exc: EncoreError, args: argparse.Namespace | None) -> str:
    message = str(exc)
    if isinstance(exc, InvalidRequest) and args is not None and getattr(args, "specs", None):
        flag = argspec.flag_for_path(args.specs, exc.field)
        if flag is not None:
            message = f"{flag} ({exc.field}): {exc.message}"
    return " ".join(message.split())  # one line, whatever the message held


def show_help(parser: argparse.ArgumentParser) -> int:
    """What a command group run without its subcommand does (`encore train`): its help on stderr, usage exit."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (the console script passes it to sys.exit)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=(logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)],
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        return show_help(parser)
    try:
        return int(args.func(args))
    except EncoreError as exc:
        code = _exit_code(exc)
        text = _error_text(exc, args)
        sys.stderr.write(f"encore {args.command}: error: {text}\n")
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": {"type": type(exc).__name__, "message": text,
                                                     "field": getattr(exc, "field", None)}}))
        return code
    except KeyboardInterrupt:
        sys.stderr.write(f"encore {args.command}: interrupted\n")
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
