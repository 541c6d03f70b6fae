"""Paired wall time of base-50 against turbo-8 of one checkpoint folder, on the eval's test prompts.

    python scripts/turbo_speed.py CHECKPOINT [NUM_PROMPTS]

Up to `5102279` `encore eval` timed the base row for minutes and then the turbo row, so on a shared machine
whose speed drifts its speed-up moved by ±0.4x between runs; it now calls the two in turn as well. This script
is the quick check: no scoring, no other rows. Both pipelines are loaded in one process and called alternately
on the same request (the eval's prompts and length; the order flips every prompt), so drift hits both
alike. Prints the median seconds per clip, the median of the per-prompt ratios and each system's median seconds
per pipeline stage (`GenerationResult.timings_s`).
"""

from __future__ import annotations

import statistics
import sys
import time

import torch


def main() -> None:
    import encore
    from encore.eval.prompts import load_prompt_set
    from encore.eval.report import median_stages, stage_text
    from encore.eval.run import DEFAULT_SYSTEMS, request_for

    checkpoint = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    torch.set_num_threads(2)
    prompts = load_prompt_set().prompts[:count]
    base, turbo = DEFAULT_SYSTEMS[0], DEFAULT_SYSTEMS[1]
    pipes = {spec.name: encore.load_pipeline(checkpoint, variant=spec.variant) for spec in (base, turbo)}
    for spec in (base, turbo):  # first-call costs stay out, as in the eval
        pipes[spec.name].generate(request_for(prompts[0], spec, 0, 2.0))
    seconds: dict[str, list[float]] = {base.name: [], turbo.name: []}
    stages: dict[str, list[dict[str, float]]] = {base.name: [], turbo.name: []}
    for k, prompt in enumerate(prompts):
        for spec in (base, turbo) if k % 2 == 0 else (turbo, base):
            request = request_for(prompt, spec, 1000 + k, None)
            start = time.perf_counter()
            result = pipes[spec.name].generate(request)
            seconds[spec.name].append(time.perf_counter() - start)
            stages[spec.name].append(result.timings_s)
    ratios = [b / t for b, t in zip(seconds[base.name], seconds[turbo.name], strict=True)]
    for name, values in seconds.items():
        print(f"{name}: median {statistics.median(values):.2f} s per clip ({len(values)} clips)")
    print(f"paired speed-up: median {statistics.median(ratios):.2f}x (range {min(ratios):.2f}-{max(ratios):.2f}x)")
    for name, splits in stages.items():
        print(f"{name} median s per stage: {stage_text(median_stages(splits))}")


if __name__ == "__main__":
    main()
