"""`python -m encore.bench`: Encore vs diffusers 0.42.1 `AceStepPipeline`, identical random weights.

One random checkpoint at the full 2B width (fewer layers, stated in the output) is written from one seed in
both the official and the diffusers layout. Each pipeline then runs turbo text2music in its own child process
per duration (so peak RSS is that pipeline's), from the same initial noise and text, after a short warm-up.
Printed: seconds per stage, the speed ratio (diffusers / Encore) and the peak-RSS ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CAPTION = ("energetic electronic dance track with driving four-on-the-floor drums, deep sub bass, shimmering "
           "synth arpeggios, wide supersaw chords and a soaring female vocal hook, festival main stage energy")
LYRICS = ("[Verse]\nCity lights are calling out my name tonight\nEvery heartbeat racing with the neon light\n"
          "[Chorus]\nWe are alive, we are alive\nDancing through the fire till the morning sky\n") * 3
SEED = 1234
WARMUP_S = 2.0
STAGES = ("encode", "sample", "decode", "post", "total")


def bench_config(num_layers: int) -> Any:
    """Official 2B widths everywhere; `num_layers` DiT layers (of 24) and fewer encoder layers."""
    from encore.models.config import AceStepConfig

    return AceStepConfig(num_hidden_layers=num_layers, num_lyric_encoder_hidden_layers=2,
                         num_timbre_encoder_hidden_layers=2, num_attention_pooler_hidden_layers=2)


def geometry_note(num_layers: int) -> str:
    return (f"DiT width 2048 (16 heads, GQA 8) with {num_layers} of 24 layers; lyric encoder 2 of 8 layers, timbre "
            "encoder 2 of 4, tokenizer/detokenizer 2 layers (as official); text encoder Qwen3 width 1024 with 2 "
            "of 28 layers; full-size VAE (official config)")


def write_checkpoints(root: Path, num_layers: int) -> tuple[Path, Path]:
    """The same random weights (one seed) in the official and the diffusers layout."""
    from encore.models.vae import VAEConfig
    from encore.pipeline.random_checkpoint import write_random_checkpoint

    config = bench_config(num_layers)
    official = write_random_checkpoint(root / "official", config=config, vae_config=VAEConfig(), seed=0)
    diffusers = write_random_checkpoint(root / "diffusers", config=config, vae_config=VAEConfig(), seed=0,
                                        layout="diffusers")
    return official, diffusers


# --------------------------------------------------------------------------------------------- workers


def status_mib(field: str) -> float:
    """A memory field of this process from /proc (Linux), in MiB: `VmRSS` (now) or `VmHWM` (peak)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> None:
    """Resets the kernel's peak-RSS mark (VmHWM) so generation peaks are measured apart from loading."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")


def _memory(after_load_peak: float, loaded: float) -> dict[str, float]:
    # clear_refs also resets what ru_maxrss reports, so the overall peak is the max of the two marks.
    generate_peak = status_mib("VmHWM")
    return {"load_peak_rss_mb": after_load_peak, "rss_loaded_mb": loaded,
            "generate_peak_rss_mb": generate_peak, "peak_rss_mb": max(after_load_peak, generate_peak)}


def _noise(duration_s: float) -> Any:
    import torch

    frames = round(duration_s * 25)
    return torch.randn((1, frames, 64), generator=torch.Generator("cpu").manual_seed(SEED))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_encore(checkpoint: Path, duration_s: float, device: str, dtype: str, repeats: int) -> dict[str, Any]:
    from encore.pipeline.pipeline import Pipeline
    from encore.pipeline.request import GenerationRequest, TextInputs

    start = time.perf_counter()
    pipe = Pipeline.from_pretrained(checkpoint, device=device, dtype=dtype)
    load_s = time.perf_counter() - start
    load_peak, loaded = status_mib("VmHWM"), status_mib("VmRSS")

    def once(seconds: float) -> tuple[float, dict[str, float]]:
        request = GenerationRequest(text=TextInputs(caption=CAPTION, lyrics=LYRICS, language="en",
                                                    duration_s=seconds), seeds=(SEED,))
        t0 = time.perf_counter()
        result = pipe.generate(request)
        _sync(device)
        return time.perf_counter() - t0, result.timings_s

    once(WARMUP_S)
    _reset_peak_rss()
    runs = []
    for _ in range(repeats):
        total, t = once(duration_s)
        stages = {"encode": t.get("load_audio", 0) + t.get("encode_audio", 0) + t.get("encode_text", 0),
                  "sample": t["sample"], "decode": t["decode"]}
        stages["post"] = total - sum(stages.values())
        stages["total"] = total
        runs.append(stages)
    return {"stages": _best(runs), "runs": runs, "load_s": load_s, **_memory(load_peak, loaded)}


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per stage, the fastest of the repeats (the box is shared; slower runs measure other tenants)."""
    return {k: min(r[k] for r in runs) for k in runs[0]}


def _timed(fn: Callable[..., Any], bucket: dict[str, float], key: str, device: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        _sync(device)
        bucket[key] = bucket.get(key, 0.0) + time.perf_counter() - t0
        return out

    return wrapper


def run_diffusers(checkpoint: Path, duration_s: float, device: str, dtype: str, repeats: int) -> dict[str, Any]:
    import torch
    from diffusers import AceStepPipeline
    from diffusers.utils import logging as dlogging
    from transformers import AutoTokenizer

    dlogging.disable_progress_bar()
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint / "tokenizer"), local_files_only=True)
    pipe = AceStepPipeline.from_pretrained(str(checkpoint), torch_dtype=torch_dtype, tokenizer=tokenizer).to(device)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    load_peak, loaded = status_mib("VmHWM"), status_mib("VmRSS")
    bucket: dict[str, float] = {}
    pipe.encode_prompt = _timed(pipe.encode_prompt, bucket, "encode", device)
    pipe.condition_encoder.forward = _timed(pipe.condition_encoder.forward, bucket, "encode", device)
    pipe.transformer.forward = _timed(pipe.transformer.forward, bucket, "sample", device)
    pipe.scheduler.step = _timed(pipe.scheduler.step, bucket, "sample", device)
    pipe.vae.decode = _timed(pipe.vae.decode, bucket, "decode", device)

    def once(seconds: float) -> float:
        bucket.clear()
        noise = _noise(seconds).to(device=device, dtype=torch_dtype)
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipe(prompt=CAPTION, lyrics=LYRICS, vocal_language="en", audio_duration=seconds, latents=noise,
                 num_inference_steps=8, shift=3.0)
        _sync(device)
        return time.perf_counter() - t0

    once(WARMUP_S)
    _reset_peak_rss()
    runs = []
    for _ in range(repeats):
        total = once(duration_s)
        stages = {k: bucket.get(k, 0.0) for k in ("encode", "sample", "decode")}
        stages["post"] = total - sum(stages.values())
        stages["total"] = total
        runs.append(stages)
    return {"stages": _best(runs), "runs": runs, "load_s": load_s, **_memory(load_peak, loaded)}


def worker_main(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run = run_encore if args.worker == "encore" else run_diffusers
    out = run(args.checkpoint, args.duration, args.device, args.dtype, args.repeats)
    print(json.dumps(out))
    return 0


# --------------------------------------------------------------------------------------------- parent


def spawn(impl: str, checkpoint: Path, duration: float, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "encore.bench", "--worker", impl, "--checkpoint", str(checkpoint),
           "--duration", str(duration), "--device", args.device, "--dtype", args.dtype,
           "--threads", str(args.threads), "--repeats", str(args.repeats)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{impl} worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict[str, Any]], durations: list[float]) -> str:
    """Markdown table: seconds per stage for both pipelines, speed ratio and peak-RSS ratio."""
    lines = ["| audio | stage | Encore s | diffusers s | speed ratio (diffusers / Encore) |",
             "|---:|---|---:|---:|---:|"]
    for d in durations:
        ours, ref = results[f"encore@{d:g}"], results[f"diffusers@{d:g}"]
        for stage in STAGES:
            a, b = ours["stages"][stage], ref["stages"][stage]
            ratio = b / a if a > 0 else math.nan
            label = f"**{stage}**" if stage == "total" else stage
            lines.append(f"| {d:g} s | {label} | {a:.2f} | {b:.2f} | {ratio:.2f}x |")
        for key, label in (("generate_peak_rss_mb", "peak RSS while generating (MiB)"),
                           ("peak_rss_mb", "peak RSS incl. loading (MiB)")):
            a, b = ours[key], ref[key]
            lines.append(f"| {d:g} s | {label} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x (memory ratio) |")
        lines.append(f"| {d:g} s | load (s) | {ours['load_s']:.2f} | {ref['load_s']:.2f} | "
                     f"{ref['load_s'] / ours['load_s']:.2f}x |")
    return "\n".join(lines)


def parent_main(args: argparse.Namespace) -> int:
    import torch

    durations = [float(d) for d in args.durations]
    with tempfile.TemporaryDirectory(prefix="encore-bench-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        print(f"writing random checkpoints ({geometry_note(args.layers)}) to {root} ...", file=sys.stderr)
        official, diffusers = write_checkpoints(root, args.layers)
        results: dict[str, dict[str, Any]] = {}
        for d in durations:
            for impl, path in (("encore", official), ("diffusers", diffusers)):
                print(f"running {impl} at {d:g} s ...", file=sys.stderr)
                results[f"{impl}@{d:g}"] = spawn(impl, path, d, args)
    header = (f"Encore vs diffusers 0.42.1 AceStepPipeline: turbo text2music, 8 steps, batch 1, identical random "
              f"weights and initial noise. {geometry_note(args.layers)}. {args.dtype} on {args.device}, "
              f"{args.threads or torch.get_num_threads()} threads, torch {torch.__version__}; "
              f"each run after a {WARMUP_S:g} s warm-up, each pipeline in its own process.")
    print(header)
    print()
    print(table(results, durations))
    if args.out:
        Path(args.out).write_text(json.dumps({"header": header, "results": results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m encore.bench", description=__doc__)
    p.add_argument("--layers", type=int, default=4, help="DiT layers (of 24) in the benchmark model (default 4).")
    p.add_argument("--durations", nargs="+", default=["10", "30"], help="Seconds of audio (default: 10 30).")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu).")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (default: torch's choice).")
    p.add_argument("--repeats", type=int, default=2, help="Timed runs per case; the fastest counts (default 2).")
    p.add_argument("--out", default=None, help="Also write the raw results as JSON here.")
    p.add_argument("--keep", default=None, help="Write the checkpoints to this folder and keep them.")
    p.add_argument("--worker", choices=["encore", "diffusers"], help=argparse.SUPPRESS)
    p.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return worker_main(args) if args.worker else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
