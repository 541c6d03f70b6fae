"""`run_eval`: generate the evaluation prompts with each system and score tempo, key, instruments and FD.

Rows of the report: the corpus renders of the same prompts (the ceiling: how well the measuring tools do on
audio that is right by construction), each model system (e.g. base-50 and turbo-8) and the random-weight
model (the floor). Every row is scored by the same estimators (`encore.eval.analysis`), the same instrument
probe (`encore.eval.probe`, trained here on the corpus or loaded) and the same Fréchet reference (probe
embeddings of held-out corpus clips).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from threadpoolctl import threadpool_limits

from encore.errors import InvalidRequest
from encore.eval import analysis
from encore.eval.features import FEATURE_VERSION, clip_features
from encore.eval.frechet import frechet_between
from encore.eval.probe import InstrumentProbe, ProbeConfig, load_probe, save_probe, train_probe
from encore.eval.prompts import EvalPrompt, PromptSet
from encore.eval.report import EvalReport, ItemResult, SystemMetrics, compare_systems, summarise
from encore.pipeline.presets import SOLVERS

log = logging.getLogger(__name__)

Solver = Literal["ode", "sde"]
PipelineFactory = Callable[[str], Any]
"""Maps a variant name (``"base"``, ``"turbo"``, ``"random"``, ...) to a loaded `Pipeline`."""
RENDERS = "renders"
RECONSTRUCTION = "vae-recon"
"""The renders after an encode/decode round trip through the evaluated model's VAE."""
VALIDATION_EVERY = 5
"""Corpus clips with ``index % 5 == 0`` are held out from probe training (probe validation + FD reference)."""
MIN_REFERENCE = 8


@dataclass(frozen=True)
class SystemSpec:
    """One evaluated row: a name, the variant the factory loads, the denoising steps, the timestep shift, the
    solver and the guidance scale (None: the variant's defaults), and whether guidance covers the beat/key
    hints (`DiffusionOptions.guide_hints`)."""

    name: str
    variant: str
    num_steps: int | None = None
    shift: float | None = None
    solver: Solver | None = None
    guidance_scale: float | None = None
    guide_hints: bool = True

    @property
    def is_floor(self) -> bool:
        return self.variant == "random"


DEFAULT_SYSTEMS = (SystemSpec("base-50", "base", 50), SystemSpec("turbo-8", "turbo", 8),
                   SystemSpec("random", "random", 8))  # fmt: skip


def parse_system(text: str) -> SystemSpec:
    """``"base-50"`` → variant base, 50 steps; ``"turbo"`` → the variant's default steps; ``"turbo-8@2"`` →
    8 steps at shift 2, ``"turbo-8:sde"`` → 8 steps with the stochastic solver, ``"base-50:g4"`` → guidance
    scale 4 and ``"base-50:no-guide-hints"`` → both guidance branches get the hints (sampler sweeps);
    ``"random"`` → floor."""
    number = r"\d+(?:\.\d+)?"
    solvers = "|".join(SOLVERS)
    pattern = (rf"([A-Za-z][\w.]*?)(?:-(\d+))?(?:@({number}))?(?::({solvers}))?(?::g({number}))?"
               r"(:no-guide-hints)?")
    m = re.fullmatch(pattern, text.strip())
    if not m:
        raise InvalidRequest("systems", "expected VARIANT, VARIANT-STEPS or VARIANT-STEPS@SHIFT, optionally "
                                        "followed by :ode or :sde, then :gSCALE, then :no-guide-hints (e.g. "
                                        f"base-50, turbo-8@2, turbo-8:sde, base-50:g4), got {text!r}")
    steps = int(m.group(2)) if m.group(2) else None
    if steps is not None and not 1 <= steps <= 200:
        raise InvalidRequest("systems", f"steps must be 1-200, got {steps}")
    shift = float(m.group(3)) if m.group(3) else None
    if shift is not None and not 1.0 <= shift <= 5.0:
        raise InvalidRequest("systems", f"shift must be 1-5, got {shift:g}")
    scale = float(m.group(5)) if m.group(5) else None
    if scale is not None and not 1.0 <= scale <= 30.0:
        raise InvalidRequest("systems", f"guidance scale must be 1-30, got {scale:g}")
    return SystemSpec(text.strip(), m.group(1), steps, shift, cast(Solver | None, m.group(4)), scale,
                      guide_hints=m.group(6) is None)


@dataclass
class _Scorer:
    """Everything a clip is scored with: the probe and the Fréchet reference embeddings."""

    probe: InstrumentProbe
    reference: np.ndarray
    probe_summary: dict[str, Any] = field(default_factory=dict)

    def score(self, prompt_id: str, audio: np.ndarray, sample_rate: int, target: EvalPrompt | Any,
              seconds: float | None = None, stage_seconds: dict[str, float] | None = None,
              ) -> tuple[ItemResult, np.ndarray]:  # fmt: skip
        """Score one clip `[C, S]` against `target` (anything with bpm, keyscale and tracks); `seconds` and
        `stage_seconds` are the generate call's wall time and its per-stage split.

        NumPy's BLAS runs single-threaded here. Its worker threads busy-wait after each call, so a timed
        generate call that followed a multi-threaded scoring shared both of this box's cores with them: the
        turbo's text encoder took 0.041 s instead of 0.021 s and its 8 steps 0.209 s instead of 0.179 s
        (medians of 8 clips). A single-threaded BLAS, or a 0.3 s sleep after scoring, gave the back-to-back
        figures again.
        """
        with threadpool_limits(limits=1, user_api="blas"):
            est = analysis.analyze_clip(audio, sample_rate)
            probs, emb = self.probe.predict(clip_features(audio, sample_rate)[None])
        classes = self.probe.classes
        item = ItemResult(
            prompt_id=prompt_id, bpm_target=float(target.bpm), bpm_estimate=est.bpm,
            tempo=analysis.tempo_match(est.bpm, float(target.bpm)), key_target=target.keyscale,
            key_estimate=est.keyscale, key=analysis.key_match(est.keyscale, target.keyscale),
            tracks_target=sorted(t for t in target.tracks if t in classes),
            probabilities={c: round(float(p), 4) for c, p in zip(classes, probs[0])},
            seconds=seconds, audio_seconds=float(np.asarray(audio).shape[-1]) / sample_rate,
            bpm_confidence=round(est.bpm_confidence, 3),
            stage_seconds={k: round(float(v), 4) for k, v in (stage_seconds or {}).items()},
        )  # fmt: skip
        return item, emb[0]


# --------------------------------------------------------------------------------------------- probe


def corpus_features(corpus_dir: str | Path, max_clips: int | None = None,
                    cache: Path | None = None) -> tuple[np.ndarray, np.ndarray, list[Any]]:  # fmt: skip
    """Probe features `[N, D]`, clip indices `[N]` and labels of a built corpus (optionally its first clips).

    With `cache`, the features are stored there (``.npz``) and reused while the corpus manifest, the feature
    version and `max_clips` are unchanged.
    """
    from encore.data.corpus import iter_clips, read_manifest

    manifest = Path(corpus_dir) / "manifest.jsonl"
    key = ""
    if cache is not None and manifest.is_file():
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
        key = f"{digest}:{FEATURE_VERSION}:{max_clips}"
        if cache.is_file():
            with np.load(cache) as z:
                if str(z["key"]) == key:
                    by_index = {lab.index: lab for lab in read_manifest(corpus_dir)}
                    return z["features"], z["indices"], [by_index[int(i)] for i in z["indices"]]
    feats, indices, labels = [], [], []
    start = time.perf_counter()
    for wav, lab in iter_clips(corpus_dir):
        if max_clips is not None and len(feats) >= max_clips:
            break
        feats.append(clip_features(wav.numpy(), lab.sample_rate))
        indices.append(lab.index)
        labels.append(lab)
    if not feats:
        raise InvalidRequest("corpus_dir", f"no clips in {corpus_dir}")
    log.info("features of %d corpus clips in %.1f s", len(feats), time.perf_counter() - start)
    features, index_array = np.stack(feats), np.array(indices)
    if cache is not None and key:
        np.savez(cache, key=np.array(key), features=features, indices=index_array)
    return features, index_array, labels


def _targets(labels: Sequence[Any], classes: tuple[str, ...]) -> np.ndarray:
    return np.array([[float(c in lab.tracks) for c in classes] for lab in labels], dtype=np.float32)


def build_scorer(corpus_dir: str | Path, out_dir: Path, *, probe_path: str | Path | None = None,
                 probe_config: ProbeConfig | None = None, max_clips: int | None = None) -> _Scorer:  # fmt: skip
    """Train the probe on the corpus (or load `probe_path`), validate it and embed the FD reference clips.

    Clips with ``index % VALIDATION_EVERY == 0`` are held out: they validate the probe and form the FD reference
    (all clips form it when fewer than `MIN_REFERENCE` are held out).
    """
    from encore.data.instruments import INSTRUMENT_CLASSES

    feats, indices, labels = corpus_features(corpus_dir, max_clips, cache=out_dir / "corpus-features.npz")
    held = indices % VALIDATION_EVERY == 0
    if held.all() or not held.any():
        held = np.zeros_like(held)
    train = ~held
    if probe_path is not None:
        probe, summary = load_probe(probe_path), {"loaded_from": str(probe_path)}
    else:
        probe, summary = train_probe(feats[train], _targets([lab for lab, t in zip(labels, train) if t],
                                                            INSTRUMENT_CLASSES),
                                     INSTRUMENT_CLASSES, probe_config)  # fmt: skip
        save_probe(probe, out_dir / "probe", summary)
    if held.any():
        probs, _ = probe.predict(feats[held])
        truth = _targets([lab for lab, h in zip(labels, held) if h], probe.classes)
        summary["validation_clips"] = int(held.sum())
        summary["validation_accuracy"] = {
            c: float(a) for c, a in zip(probe.classes, ((probs > 0.5) == (truth > 0.5)).mean(axis=0))
        }
    reference_rows = held if held.sum() >= MIN_REFERENCE else np.ones_like(held)
    _, reference = probe.predict(feats[reference_rows])
    summary["reference_clips"] = int(reference_rows.sum())
    summary["reference_is_held_out"] = bool(held.sum() >= MIN_REFERENCE)
    return _Scorer(probe, reference, summary)


# --------------------------------------------------------------------------------------------- rows


def _render_clips(prompt_set: PromptSet, prompts: Sequence[EvalPrompt], duration_s: float | None) -> list[Any]:
    """Each prompt's held-out clip (`encore.data.corpus.Clip`), rendered from the prompt set's seed."""
    from encore.data.corpus import generate_clip

    cfg = (
        prompt_set.config
        if duration_s is None
        else dataclasses.replace(prompt_set.config, clip_seconds=duration_s)
    )
    return [generate_clip(prompt_set.seed, prompt.index, cfg) for prompt in prompts]


def _render_row(prompts: Sequence[EvalPrompt], clips: Sequence[Any], scorer: _Scorer,
                sample_rate: int) -> tuple[list[ItemResult], np.ndarray]:  # fmt: skip
    """Score each prompt's rendered clip against its own labels (flags prompts gone stale)."""
    items, embs = [], []
    for prompt, clip in zip(prompts, clips, strict=True):
        item, emb = scorer.score(prompt.id, clip.mix, sample_rate, clip.labels)
        lab = clip.labels
        item.stale = (lab.bpm, lab.keyscale, tuple(lab.tracks)) != (
            prompt.bpm,
            prompt.keyscale,
            prompt.tracks,
        )
        items.append(item)
        embs.append(emb)
    return items, np.stack(embs)


def _reconstruction_row(pipeline: Any, prompts: Sequence[EvalPrompt], clips: Sequence[Any], scorer: _Scorer,
                        sample_rate: int) -> tuple[list[ItemResult], np.ndarray]:  # fmt: skip
    """Score each rendered clip after a round trip through the pipeline's VAE (posterior mean, the same tiled
    encode and decode generation uses): the best any DiT decoding through this VAE can do, which separates the
    autoencoder's losses from the generator's."""
    import torch

    if sample_rate != pipeline.sample_rate:
        raise InvalidRequest("prompts", f"renders are {sample_rate} Hz but the VAE runs at "
                                        f"{pipeline.sample_rate} Hz")  # fmt: skip
    items, embs = [], []
    for prompt, clip in zip(prompts, clips, strict=True):
        wav = torch.from_numpy(np.ascontiguousarray(clip.mix, dtype=np.float32))
        with torch.inference_mode():
            audio = pipeline.decode_latents(pipeline.encode_audio(wav, sample=False))[0].numpy()
        item, emb = scorer.score(prompt.id, audio, sample_rate, clip.labels)
        items.append(item)
        embs.append(emb)
    return items, np.stack(embs)


def request_for(prompt: EvalPrompt, spec: SystemSpec, seed: int, duration_s: float | None) -> Any:
    """The `GenerationRequest` a system gets for `prompt`: caption plus bpm/key/time-signature metas."""
    from encore.pipeline.request import DiffusionOptions, GenerationRequest, OutputOptions, TextInputs

    text = TextInputs(caption=prompt.caption, lyrics="[Instrumental]", language="unknown", bpm=prompt.bpm,
                      keyscale=prompt.keyscale, timesignature=prompt.timesignature,
                      duration_s=duration_s if duration_s is not None else prompt.duration_s)  # fmt: skip
    diffusion = DiffusionOptions(num_steps=spec.num_steps, shift=spec.shift, solver=spec.solver,
                                 guidance_scale=spec.guidance_scale, guide_hints=spec.guide_hints)
    output = OutputOptions(normalize="peak")
    return GenerationRequest(text=text, diffusion=diffusion, seeds=(seed,), output=output)


def _save_audio(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.ascontiguousarray(audio.T), sample_rate, format="FLAC", subtype="PCM_16")


def _model_rows(
    factory: PipelineFactory,
    specs: Sequence[SystemSpec],
    prompts: Sequence[EvalPrompt],
    scorer: _Scorer,
    *,
    seed: int,
    duration_s: float | None,
    audio_dir: Path | None,
) -> dict[str, tuple[list[ItemResult], np.ndarray, dict[str, Any]]]:
    """Generate and score every prompt with each of `specs`, timing each generate call; per system its items,
    their probe embeddings and how the pipeline sampled them (`sampling_of`).

    The systems are loaded together, warmed up once each (untimed), then called prompt by prompt, the order
    rotating every prompt: on a machine whose speed drifts over minutes, base and turbo are then timed under
    the same conditions (timed one after the other, their speed-up moved by ±0.4x between runs of the same
    models here). The calls run back to back: each clip goes to a temporary `.npy` file and is scored (and
    saved as FLAC) after the last call, because work between the calls slowed the next one (NumPy's BLAS
    workers spinning, `_Scorer.score`; and with those limited, the base's 50 steps still took 1.67-1.80 s
    inside the eval against 1.43-1.55 s back to back).
    """
    pipelines = [factory(spec.variant) for spec in specs]
    for spec, pipeline in zip(specs, pipelines, strict=True):
        pipeline.generate(request_for(prompts[0], spec, seed, 2.0))  # first-call costs stay out of the timings
    order = list(range(len(specs)))
    calls: list[tuple[SystemSpec, EvalPrompt, Path, int, float, dict[str, float]]] = []
    sampling: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="encore-eval-") as tmp:
        for k, prompt in enumerate(prompts):
            for j in order[k % len(order) :] + order[: k % len(order)]:
                spec, pipeline = specs[j], pipelines[j]
                request = request_for(prompt, spec, seed + k, duration_s)
                start = time.perf_counter()
                result = pipeline.generate(request)
                seconds = time.perf_counter() - start
                clip = Path(tmp) / f"{len(calls)}.npy"
                np.save(clip, result.audio[0].float().numpy())
                calls.append((spec, prompt, clip, result.sample_rate, seconds, dict(result.timings_s)))
                sampling.setdefault(spec.name, sampling_of(result))
        del pipelines
        items: dict[str, list[ItemResult]] = {spec.name: [] for spec in specs}
        embs: dict[str, list[np.ndarray]] = {spec.name: [] for spec in specs}
        for spec, prompt, clip, rate, seconds, stages in calls:
            audio = np.load(clip)
            if audio_dir is not None:
                _save_audio(audio_dir / spec.name / f"{prompt.id}.flac", audio, rate)
            item, emb = scorer.score(prompt.id, audio, rate, prompt, seconds, stages)
            items[spec.name].append(item)
            embs[spec.name].append(emb)
            log.info("%s %s: %.2f s, tempo %s, key %s", spec.name, prompt.id, seconds, item.tempo, item.key)
    return {name: (items[name], np.stack(embs[name]), sampling[name]) for name in items}


def sampling_of(result: Any) -> dict[str, Any]:
    """The sampler settings a generate call ran with, as the pipeline resolved them from the request and the
    model's defaults (a row named ``turbo-8@2.5`` runs at shift 2: turbo shifts snap to 1, 2 or 3)."""
    diffusion = result.params["request"]["diffusion"]
    keys = ("num_steps", "shift", "solver", "guidance", "guidance_scale")
    out = {k: diffusion[k] for k in keys if diffusion.get(k) is not None}
    if out.get("guidance") and result.params.get("beat_hints"):  # only then does guide_hints change anything
        out["guide_hints"] = diffusion["guide_hints"]
    return out


def timing_groups(systems: Sequence[SystemSpec], interleave: bool) -> list[list[SystemSpec]]:
    """The systems generated together: with `interleave`, all model rows in one group (the floor alone, after
    them: it is not compared, and a third model in memory costs the most for the largest checkpoints)."""
    if not interleave:
        return [[spec] for spec in systems]
    models = [spec for spec in systems if not spec.is_floor]
    return ([models] if models else []) + [[spec] for spec in systems if spec.is_floor]


def _frechet(embs: np.ndarray, reference: np.ndarray) -> float | None:
    if embs.shape[0] < 2 or reference.shape[0] < 2:
        return None
    return frechet_between(embs, reference)


# --------------------------------------------------------------------------------------------- entry point


def run_eval(pipeline_factory: PipelineFactory, *, prompts: PromptSet, corpus_dir: str | Path,
             out_dir: str | Path, systems: Sequence[SystemSpec] = DEFAULT_SYSTEMS, include_renders: bool = True,
             probe_path: str | Path | None = None, probe_config: ProbeConfig | None = None,
             limit: int | None = None, duration_s: float | None = None, seed: int = 0,
             save_audio: bool = False, max_corpus_clips: int | None = None,
             include_reconstruction: bool = True, interleave: bool = True) -> EvalReport:  # fmt: skip
    """Evaluate every system on the prompt set and write ``eval.json`` and ``eval.md`` into `out_dir`.

    The timed model rows run first (back to back, scored afterwards), then the renders and the VAE round trip,
    then the floor; the table lists them as renders, round trip, systems.

    Args:
        pipeline_factory: ``factory(variant) -> Pipeline`` (called once per system, in order, and once more for
            the reconstruction row when not interleaved).
        prompts: The prompt set (`encore.eval.prompts.load_prompt_set()`).
        corpus_dir: A built training corpus: trains the probe and gives the FD reference.
        out_dir: Where the report, the probe and (optionally) the audio go.
        systems: Rows to generate; a `SystemSpec` with variant ``"random"`` is the floor.
        include_renders: Add the ceiling row (renders the prompts' held-out clips; needs FluidSynth).
        probe_path: Use this saved probe instead of training one.
        probe_config: Probe training settings.
        limit: Evaluate only the first `limit` prompts (quick checks).
        duration_s: Override every prompt's duration (quick checks; the committed table uses the prompts' own).
        seed: Generation seed of prompt 0 (prompt k uses seed + k), identical for every system.
        save_audio: Keep each generated clip as FLAC under ``out_dir/audio/<system>/``.
        max_corpus_clips: Read only the first clips of the corpus.
        include_reconstruction: With the renders, add the autoencoder row: the renders through the VAE of the
            first non-floor system (the ceiling for anything decoded by that VAE).
        interleave: Load the model systems together and call them prompt by prompt in rotating order, so
            their timings share the machine's conditions (`timing_groups`); False loads and runs one system at
            a time (least memory). The items, seeds and scores are the same either way.

    Raises:
        InvalidRequest: the corpus uses the prompt set's held-out seed, or bad arguments.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = list(prompts.prompts[:limit] if limit is not None else prompts.prompts)
    if not chosen:
        raise InvalidRequest("limit", "no prompts to evaluate")
    prompt_info = _check_held_out(prompts, chosen, corpus_dir)
    scorer = build_scorer(corpus_dir, out, probe_path=probe_path, probe_config=probe_config,
                          max_clips=max_corpus_clips)  # fmt: skip
    # The timed model rows run first, in a process that has done nothing else yet: after rendering and
    # round-tripping the 64 renders the same pipelines decoded 0.21 s per clip instead of 0.17-0.18 s. The
    # floor (not timed against anything) runs last, alone.
    models = [spec for spec in systems if not spec.is_floor]
    recon_variant = models[0].variant if include_renders and include_reconstruction and models else None
    # Interleaved, the reconstruction row reuses the model rows' first pipeline of its variant; sequential
    # runs (least memory) load it again instead of holding it.
    remembered, kept = remembering(pipeline_factory, recon_variant if interleave else None)
    audio_dir = out / "audio" if save_audio else None
    groups = timing_groups(systems, interleave)
    generated: dict[str, tuple[list[ItemResult], np.ndarray, dict[str, Any]]] = {}
    for group in (g for g in groups if not any(spec.is_floor for spec in g)):
        generated.update(_model_rows(remembered, group, chosen, scorer, seed=seed, duration_s=duration_s,
                                     audio_dir=audio_dir))  # fmt: skip
    rows: list[SystemMetrics] = []
    if include_renders:
        clips, rate = _render_clips(prompts, chosen, duration_s), prompts.config.sample_rate
        items, embs = _render_row(chosen, clips, scorer, rate)
        rows.append(summarise(RENDERS, "ceiling", items, _frechet(embs, scorer.reference)))
        if recon_variant is not None:
            pipeline = kept.pop() if kept else pipeline_factory(recon_variant)
            items, embs = _reconstruction_row(pipeline, chosen, clips, scorer, rate)
            rows.append(summarise(RECONSTRUCTION, "autoencoder", items, _frechet(embs, scorer.reference)))
            del pipeline, clips
    kept.clear()
    for group in (g for g in groups if any(spec.is_floor for spec in g)):
        generated.update(_model_rows(pipeline_factory, group, chosen, scorer, seed=seed, duration_s=duration_s,
                                     audio_dir=audio_dir))  # fmt: skip
    for spec in systems:
        items, embs, sampled = generated[spec.name]
        rows.append(summarise(spec.name, "floor" if spec.is_floor else "model", items,
                              _frechet(embs, scorer.reference), num_steps=spec.num_steps, sampling=sampled))  # fmt: skip
    comparison = compare_systems(rows, systems)
    if comparison is not None:
        comparison["timing"] = "interleaved" if interleave else "sequential"
    report = EvalReport(systems=rows, probe=scorer.probe_summary, prompts=prompt_info, comparison=comparison)
    report.save(out)
    return report


def remembering(factory: PipelineFactory, variant: str | None) -> tuple[PipelineFactory, list[Any]]:
    """`factory`, and a list that receives the first pipeline it loads for `variant` (the reconstruction row
    reuses it after the model rows instead of loading the same checkpoint a second time; None keeps none)."""
    kept: list[Any] = []

    def load(requested: str) -> Any:
        pipeline = factory(requested)
        if requested == variant and not kept:
            kept.append(pipeline)
        return pipeline

    return load, kept


def _check_held_out(
    prompt_set: PromptSet, chosen: Sequence[EvalPrompt], corpus_dir: str | Path
) -> dict[str, Any]:
    """Refuse a corpus built under the prompts' seed; count prompt captions that also caption a training clip."""
    from encore.data.corpus import read_manifest

    meta_path = Path(corpus_dir) / "corpus.json"
    corpus_seed = (
        json.loads(meta_path.read_text(encoding="utf-8")).get("seed") if meta_path.is_file() else None
    )
    if corpus_seed == prompt_set.seed:
        raise InvalidRequest(
            "corpus_dir",
            f"the corpus was built with seed {corpus_seed}, the evaluation prompts' "
            "held-out seed; build the training corpus with another seed",
        )
    seen = {c for lab in read_manifest(corpus_dir) for c in (lab.captions or [lab.caption])}
    return {
        "count": len(chosen),
        "seed": prompt_set.seed,
        "corpus_seed": corpus_seed,
        "caption_overlap": sum(p.caption in seen for p in chosen),
        "sources": {s: sum(p.source == s for p in chosen) for s in sorted({p.source for p in chosen})},
    }


def random_pipeline_like(checkpoint: str | Path, dest: str | Path, *, variant: str | None = None,
                         seed: int = 0, **load_kwargs: Any) -> Any:  # fmt: skip
    """The floor model: random weights with the geometry (DiT and VAE configs) of `checkpoint`.

    Writes the random checkpoint under `dest` (reused while it was written for the same checkpoint and seed,
    rewritten when it was written for others; a foreign non-empty `dest` is refused) and loads it with
    `load_kwargs`.
    """
    import torch

    from encore.pipeline.loading import load_dit_config, load_pipeline, load_vae, resolve_checkpoint
    from encore.pipeline.random_checkpoint import write_random_checkpoint

    root = Path(dest)
    marker = root / ".complete"
    paths = resolve_checkpoint(checkpoint, variant=variant)
    identity = f"random weights (seed {seed}) shaped like {paths.dit.resolve()}\n"
    if not marker.is_file() or marker.read_text(encoding="utf-8") != identity:
        if marker.is_file():
            shutil.rmtree(root)  # our own floor checkpoint, written for another checkpoint or seed
        elif root.exists() and any(root.iterdir()):
            raise InvalidRequest("dest", f"{root} exists and is not a finished random checkpoint; remove it")
        _, vae_config = load_vae(paths.vae, dtype=torch.float32, check_finite=False)
        config = load_dit_config(paths, vae_config)
        write_random_checkpoint(root, config=config, vae_config=vae_config, seed=seed)
        marker.write_text(identity, encoding="utf-8")
    return load_pipeline(root, **load_kwargs)
