"""Evaluation results: per-clip items, per-system metrics, the turbo-vs-base comparison, JSON and markdown.

Instrument metrics are multi-label over the probe's classes: *accuracy* is the per-clip Jaccard index
|predicted ∩ asked| / |predicted ∪ asked| averaged over clips (the usual multi-label "accuracy"), *top-1* is
whether the probe's most confident class is one the prompt asked for; a class counts as predicted at p > 0.5.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from encore.eval.analysis import KeyMatch, TempoMatch, key_summary, tempo_summary

THRESHOLD = 0.5
COMPARED = (("tempo", "acc1"), ("key", "exact"), ("instrument", "accuracy"))
"""Metrics on which turbo must stay within `TURBO_TOLERANCE` of base."""
TURBO_TOLERANCE = 0.10


@dataclass
class ItemResult:
    """One clip's estimates against its target labels."""

    prompt_id: str
    bpm_target: float
    bpm_estimate: float | None
    tempo: TempoMatch
    key_target: str
    key_estimate: str | None
    key: KeyMatch
    tracks_target: list[str]
    """Asked-for track classes the probe knows."""
    probabilities: dict[str, float]
    """Probe probability per class."""
    seconds: float | None = None
    """Wall time of the generate call (None for renders)."""
    audio_seconds: float = 0.0
    stale: bool = False
    """Renders only: the clip's labels no longer equal the committed prompt's (corpus code changed)."""
    bpm_confidence: float | None = None
    """The tempo estimator's confidence: how clear a steady pulse the clip has (0 = none), whatever its tempo."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each pipeline stage of the generate call (its `timings_s`: text, sampling, decode...)."""

    @property
    def tracks_predicted(self) -> list[str]:
        return sorted(c for c, p in self.probabilities.items() if p > THRESHOLD)


@dataclass
class SystemMetrics:
    """Aggregate metrics of one row of the table."""

    name: str
    role: str
    """``"ceiling"`` (renders), ``"autoencoder"`` (renders through the VAE), ``"model"`` or ``"floor"``."""
    num_items: int
    tempo: dict[str, float]
    key: dict[str, float]
    instrument: dict[str, float]
    instrument_per_class: dict[str, dict[str, float | None]]
    frechet: float | None
    num_steps: int | None = None
    seconds_per_item: float | None = None
    """Median wall-clock seconds of one generate call (robust to a busy machine)."""
    realtime_factor: float | None = None
    """Seconds of audio generated per wall-clock second."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Median seconds of each pipeline stage over the timed items: where a row's time goes."""
    intervals: dict[str, list[float]] = field(default_factory=dict)
    """`bootstrap_intervals` of the row's tempo, exact-key and instrument figures."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """How a model row's generate calls sampled, as the pipeline resolved it (steps, shift, solver, guidance)."""
    stale: int = 0
    items: list[ItemResult] = field(default_factory=list)


BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_LEVEL = 0.95


def _jaccard(item: ItemResult) -> float:
    pred, asked = set(item.tracks_predicted), set(item.tracks_target)
    either = len(pred | asked)
    return 1.0 if either == 0 else len(pred & asked) / either


def bootstrap_intervals(items: Sequence[ItemResult], *, resamples: int = BOOTSTRAP_RESAMPLES,
                        seed: int = 0) -> dict[str, list[float]]:  # fmt: skip
    """Percentile bootstrap intervals (`BOOTSTRAP_LEVEL`, prompts resampled with replacement, fixed seed) of
    the `COMPARED` metrics: how far a 64-prompt figure can move by the draw of prompts alone, so two releases
    or a target are not compared on differences smaller than that."""
    if not items:
        return {}
    draws = np.random.default_rng(seed).integers(0, len(items), size=(resamples, len(items)))
    return {name: _quantiles(v[draws].mean(axis=1)) for name, v in _compared_values(items).items()}


def paired_relative_intervals(
    base: Sequence[ItemResult], turbo: Sequence[ItemResult], *,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> dict[str, list[float] | None]:
    """Paired bootstrap intervals of `turbo / base - 1` for the `COMPARED` metrics: the same resampled prompts
    score both rows, which is what the turbo line ("within 10 % of base") asks. Items pair by prompt id; None
    for a metric whose base mean is 0 in some resample."""
    by_id = {i.prompt_id: i for i in turbo}
    pairs = [(b, by_id[b.prompt_id]) for b in base if b.prompt_id in by_id]
    if not pairs:
        return {}
    draws = np.random.default_rng(seed).integers(0, len(pairs), size=(resamples, len(pairs)))
    b_vals, t_vals = _compared_values([b for b, _ in pairs]), _compared_values([t for _, t in pairs])
    out: dict[str, list[float] | None] = {}
    for name in b_vals:
        b_mean, t_mean = b_vals[name][draws].mean(axis=1), t_vals[name][draws].mean(axis=1)
        out[name] = None if (b_mean <= 0).any() else _quantiles(t_mean / b_mean - 1.0)
    return out


def _compared_values(items: Sequence[ItemResult]) -> dict[str, np.ndarray]:
    """Per-clip values whose means are the `COMPARED` metrics."""
    return {"tempo.acc1": np.array([float(i.tempo == "exact") for i in items]),
            "key.exact": np.array([float(i.key == "exact") for i in items]),
            "instrument.accuracy": np.array([_jaccard(i) for i in items])}  # fmt: skip


def _quantiles(samples: np.ndarray) -> list[float]:
    tail = (1.0 - BOOTSTRAP_LEVEL) / 2
    return [float(q) for q in np.quantile(samples, [tail, 1.0 - tail])]


def instrument_scores(
    items: Sequence[ItemResult],
) -> tuple[dict[str, float], dict[str, dict[str, float | None]]]:
    """Multi-label accuracy (Jaccard), F1, exact-set and top-1 over clips, and precision/recall per class."""
    jaccard, f1, exact, top1 = [], [], [], []
    counts: dict[str, list[int]] = {}
    for item in items:
        pred, asked = set(item.tracks_predicted), set(item.tracks_target)
        both, either = len(pred & asked), len(pred | asked)
        jaccard.append(_jaccard(item))
        f1.append(1.0 if either == 0 else 2 * both / (len(pred) + len(asked)))
        exact.append(float(pred == asked))
        best = max(item.probabilities, key=item.probabilities.__getitem__) if item.probabilities else None
        top1.append(float(best in asked))
        for c in item.probabilities:
            tp_fp_fn = counts.setdefault(c, [0, 0, 0])
            tp_fp_fn[0] += c in pred and c in asked
            tp_fp_fn[1] += c in pred and c not in asked
            tp_fp_fn[2] += c in asked and c not in pred
    per_class = {c: {"precision": tp / (tp + fp) if tp + fp else None,
                     "recall": tp / (tp + fn) if tp + fn else None, "support": float(tp + fn)}
                 for c, (tp, fp, fn) in counts.items()}  # fmt: skip
    summary = {"accuracy": float(np.mean(jaccard)), "f1": float(np.mean(f1)), "exact_set": float(np.mean(exact)),
               "top1": float(np.mean(top1))}  # fmt: skip
    return summary, per_class


def median_stages(splits: Iterable[dict[str, float]]) -> dict[str, float]:
    """Median seconds of each pipeline stage over generate calls' `timings_s` (each over the calls that have it)."""
    splits = list(splits)
    return {name: float(np.median([split[name] for split in splits if name in split]))
            for name in dict.fromkeys(n for split in splits for n in split)}  # fmt: skip


def stage_text(stages: dict[str, float]) -> str:
    """``encode_text 0.020; sample 0.173; ...``; stages under half a millisecond (reading no audio) left out."""
    return "; ".join(f"{name} {seconds:.3f}" for name, seconds in stages.items() if seconds >= 5e-4)


def summarise(name: str, role: str, items: list[ItemResult], frechet: float | None,
              num_steps: int | None = None, sampling: dict[str, Any] | None = None) -> SystemMetrics:  # fmt: skip
    """Aggregate a row's items (tempo, key, instrument metrics, timing)."""
    instrument, per_class = instrument_scores(items)
    timed = [i for i in items if i.seconds is not None]
    seconds = float(np.median([i.seconds for i in timed])) if timed else None
    rtf = sum(i.audio_seconds for i in timed) / sum(i.seconds for i in timed) if timed else None  # type: ignore[misc]
    stages = median_stages(i.stage_seconds for i in items)
    tempo = tempo_summary([i.tempo for i in items])
    confidences = [i.bpm_confidence for i in items if i.bpm_confidence is not None]
    if confidences:  # pulse: a clip can miss the asked tempo with a clear beat, or have no beat at all
        tempo["pulse"] = float(np.mean(confidences))
    return SystemMetrics(
        name=name, role=role, num_items=len(items), tempo=tempo,
        key=key_summary([i.key for i in items]), instrument=instrument, instrument_per_class=per_class,
        frechet=frechet, num_steps=num_steps, seconds_per_item=seconds, realtime_factor=rtf,
        stale=sum(i.stale for i in items), stage_seconds=stages, intervals=bootstrap_intervals(items),
        sampling=dict(sampling or {}), items=items,
    )  # fmt: skip


def compare_systems(rows: Sequence[SystemMetrics], specs: Sequence[Any]) -> dict[str, Any] | None:
    """Turbo vs base on the same prompts: speed-up and the `COMPARED` metrics (None unless both were run)."""
    by_variant = {s.variant: s.name for s in specs}
    named = {r.name: r for r in rows}
    if "base" not in by_variant or "turbo" not in by_variant:
        return None
    base, turbo = named[by_variant["base"]], named[by_variant["turbo"]]
    metrics, within = {}, True
    for group, key in COMPARED:
        b, t = getattr(base, group)[key], getattr(turbo, group)[key]
        rel = (t - b) / b if b > 0 else None
        ok = t >= (1.0 - TURBO_TOLERANCE) * b
        within &= ok
        metrics[f"{group}.{key}"] = {"base": b, "turbo": t, "difference": t - b, "relative": rel, "ok": ok}
    for name, interval in paired_relative_intervals(base.items, turbo.items).items():
        metrics[name]["relative_interval"] = interval
    speedup = (base.seconds_per_item / turbo.seconds_per_item
               if base.seconds_per_item and turbo.seconds_per_item else None)  # fmt: skip
    return {"base": base.name, "turbo": turbo.name, "speedup": speedup, "metrics": metrics,
            "within_tolerance": within, "tolerance": TURBO_TOLERANCE}  # fmt: skip


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _num(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def _sampling_text(sampling: dict[str, Any]) -> str:
    """``{"num_steps": 50, "shift": 3.0, "solver": "ode", "guidance": "apg", "guidance_scale": 7.0}`` ->
    ``50 steps, shift 3, ode, apg 7`` (guidance only when it is on; ``on hints`` / ``not on hints`` when the
    model read beat/key hints, `DiffusionOptions.guide_hints`)."""
    parts = [f"{sampling['num_steps']} steps" if "num_steps" in sampling else "",
             f"shift {sampling['shift']:g}" if "shift" in sampling else "", sampling.get("solver", "")]
    if sampling.get("guidance") and sampling.get("guidance_scale", 1.0) > 1.0:
        parts.append(f"{sampling['guidance']} {sampling['guidance_scale']:g}")
        if "guide_hints" in sampling:
            parts[-1] += " on hints" if sampling["guide_hints"] else " not on hints"
    return ", ".join(p for p in parts if p)


_ROLE_LABEL = {"ceiling": " (ceiling)", "autoencoder": " (VAE ceiling)", "floor": " (floor)", "model": ""}


@dataclass
class EvalReport:
    """Every row, the probe summary, prompt-set facts and the turbo-vs-base comparison."""

    systems: list[SystemMetrics]
    probe: dict[str, Any]
    prompts: dict[str, Any]
    comparison: dict[str, Any] | None = None

    def row(self, name: str) -> SystemMetrics:
        return next(r for r in self.systems if r.name == name)

    def to_dict(self) -> dict[str, Any]:
        rows = []
        for r in self.systems:
            d = asdict(r)
            for item, obj in zip(d["items"], r.items):
                item["tracks_predicted"] = obj.tracks_predicted
            rows.append(d)
        return {"systems": rows, "probe": self.probe, "prompts": self.prompts, "comparison": self.comparison}

    def to_markdown(self) -> str:
        """The table for ``docs/model-card.md`` plus a few lines on the comparison, probe and prompts."""
        head = ("| system | clips | tempo ±4% | ×2 | ×½ | pulse | key exact | key rel./par. | key MIREX | instr. acc. "
                "| instr. top-1 | FD ↓ | s / clip |")  # fmt: skip
        lines = [head, "|" + "---|" * 13]
        for r in self.systems:
            rel_par = r.key["relative"] + r.key["parallel"]
            lines.append(
                f"| {r.name}{_ROLE_LABEL.get(r.role, '')} | {r.num_items} | {_pct(r.tempo['acc1'])} | "
                f"{_pct(r.tempo['double'])} | {_pct(r.tempo['half'])} | {_num(r.tempo.get('pulse'), '.2f')} | "
                f"{_pct(r.key['exact'])} | {_pct(rel_par)} | "
                f"{_num(r.key['mirex'], '.2f')} | {_pct(r.instrument['accuracy'])} | {_pct(r.instrument['top1'])} | "
                f"{_num(r.frechet, '.1f')} | {_num(r.seconds_per_item, '.2f')} |"
            )
        lines.append("")
        lines += self._notes()
        return "\n".join(lines) + "\n"

    def _notes(self) -> list[str]:
        notes = []
        c = self.comparison
        if c is not None:
            parts = [f"{k} {_pct(m['base'])} → {_pct(m['turbo'])}" for k, m in c["metrics"].items()]
            # Two decimals: a 4.96x speed-up must not print as a 5x one.
            speed = f"{c['speedup']:.2f}× faster" if c["speedup"] else "speed-up unknown"
            if c.get("timing"):
                speed += f" (median s / clip, timed {c['timing']})"
            verdict = "within" if c["within_tolerance"] else "NOT within"
            notes.append(f"- {c['turbo']} vs {c['base']}: {speed}; {', '.join(parts)} ({verdict} "
                         f"{100 * c['tolerance']:.0f}% of base).")  # fmt: skip
            spans = [f"{k} {100 * m['relative_interval'][0]:+.0f} to {100 * m['relative_interval'][1]:+.0f}%"
                     for k, m in c["metrics"].items() if m.get("relative_interval")]  # fmt: skip
            if spans:
                notes.append(f"- {c['turbo']} / {c['base']} − 1, {100 * BOOTSTRAP_LEVEL:.0f}% paired bootstrap over "
                             f"prompts: {', '.join(spans)}.")  # fmt: skip
        bounded = [r for r in self.systems if r.intervals]
        if bounded:
            spans = [f"{r.name} " + " / ".join(f"{100 * lo:.0f}–{100 * hi:.0f}" for lo, hi in r.intervals.values())
                     for r in bounded]  # fmt: skip
            notes.append(f"- {100 * BOOTSTRAP_LEVEL:.0f}% bootstrap intervals over prompts (tempo / key exact / "
                         f"instr. acc., %): {'; '.join(spans)}.")  # fmt: skip
        sampled = [f"{r.name} {_sampling_text(r.sampling)}" for r in self.systems if r.sampling]
        if sampled:
            notes.append(f"- sampling as run: {'; '.join(sampled)}.")
        staged = [r for r in self.systems if r.stage_seconds]
        if staged:
            rows = [f"{r.name}; {stage_text(r.stage_seconds)}" for r in staged]
            notes.append(f"- median s per stage of a generate call: {' | '.join(rows)}.")
        notes.append("- pulse: mean confidence of the tempo estimator (0 = no steady beat, whatever the tempo).")
        p = self.prompts
        notes.append(f"- Prompts: {p.get('count')} held-out prompts (corpus seed {p.get('seed')}; "
                     f"sources {p.get('sources')}); captions also in the training corpus: "
                     f"{p.get('caption_overlap')}.")  # fmt: skip
        val = self.probe.get("validation_accuracy")
        if val:
            notes.append(f"- Instrument probe: MLP over log-mel statistics, classes {', '.join(val)}; mean per-class "
                         f"accuracy {_pct(float(np.mean(list(val.values()))))} on {self.probe.get('validation_clips')}"
                         " held-out corpus clips.")  # fmt: skip
        notes.append(
            f"- FD: Fréchet distance of probe hidden-layer embeddings to {self.probe.get('reference_clips')} "
            f"{'held-out ' if self.probe.get('reference_is_held_out') else ''}corpus clips."
        )
        stale = sum(r.stale for r in self.systems)
        if stale:
            notes.append(
                f"- WARNING: {stale} prompt renders no longer match prompts.json (corpus code changed)."
            )
        return notes

    def save(self, out_dir: str | Path) -> tuple[Path, Path]:
        """Write ``eval.json`` and ``eval.md``; returns both paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        json_path, md_path = out / "eval.json", out / "eval.md"
        json_path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        md_path.write_text(self.to_markdown(), encoding="utf-8")
        return json_path, md_path
