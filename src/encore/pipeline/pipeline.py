"""Pipeline: one typed `GenerationRequest` in, audio out, for every task (SPEC §5, §9–§11).

`Pipeline.generate` is a short list of stages: resolve defaults → load and encode source/reference audio →
build the task conditioning → encode text and conditions → sample → splice kept regions → tiled VAE decode →
finite checks → keep-splice / normalise. Noise is drawn on the CPU from one generator per item, so a seed
gives the same audio on any device. Front-ends call only `generate`, `encode_audio` and `decode_latents`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from encore import __version__
from encore.data.instruments import hint_tracks
from encore.errors import AudioError, Cancelled, InvalidRequest
from encore.models.dit import CrossKVCache
from encore.pipeline import adapters, postprocess
from encore.pipeline.request import (
    MAX_SEED,
    CancelToken,
    DiffusionOptions,
    GenerationRequest,
    GenerationResult,
    ProgressFn,
    TextInputs,
    kind_of,
    request_to_dict,
    text2music_duration_s,
)
from encore.sampling import guidance, schedules, solvers
from encore.tasks import conditioning as tc
from encore.tasks import prompts
from encore.tasks.beat_hints import beat_hints
from encore.tasks.spec import Complete, Cover, Extend, Extract, Lego, Repaint, Text2Music
from encore.utils.cpu_memory import reused_heap

log = logging.getLogger(__name__)

CAPTION_MAX_TOKENS = 256
LYRIC_MAX_TOKENS = 2048
REFERENCE_TOTAL_S = 30.0
REFERENCE_SEGMENT_S = 10.0
"""Reference audio is repeated to >= 30 s and three 10 s segments are encoded for the timbre encoder (§6)."""
MAX_UNDERSTAND_S = 600.0
"""Longest audio `audio_codes` reads: the planner's largest song (3 000 codes) fits its 4 096-token context."""
FULL_SPAN_MASK_VALUE = 1.0
"""Chunk-mask value of whole-span tasks: 1.0 as the Feb-snapshot and diffusers feed (SPEC §16.1)."""
_SOURCE_SEED_SALT = 0x9E3779B97F4A7C15
"""Offsets the source-posterior seed so it never reuses the stream that draws item 0's initial noise."""
BASE_ONLY_TASKS = (Extract, Lego, Complete)
"""Tasks only the base model was trained for (official README model zoo, `TASK_TYPES_BASE`)."""
_STREAMS = {"source": 1, "reference_window": 2, "reference": 3}
_STAGE_WEIGHTS = {"load_audio": 0.02, "encode_audio": 0.06, "encode_text": 0.04, "sample": 0.76,
                  "decode": 0.10, "finish": 0.02}
_PLAN_WEIGHT = 0.4
"""Share of the progress bar the planner gets when thinking (the other stages share the rest)."""


@dataclass(frozen=True)
class SamplingPlan:
    """Resolved diffusion settings of one call (request values with the variant's defaults filled in)."""

    timesteps: Tensor
    """Schedule in the model dtype: turbo [N] (implicit final 0) or base/SFT [N+1] ending at 0."""
    num_steps: int
    shift: float
    guidance_scale: float
    guidance: str | None
    """`None` when guidance is off (turbo, or `guidance_scale == 1`)."""
    cfg_interval: tuple[float, float]
    solver: str
    guide_hints: bool


@dataclass
class _Inputs:
    """Waveforms loaded for one call, float32 [2, S] at the VAE rate."""

    source: Tensor | None = None
    reference: Tensor | None = None


@dataclass
class _Run:
    """Everything resolved for one `generate` call."""

    request: GenerationRequest
    kind: str
    seeds: tuple[int, ...]
    sampling: SamplingPlan
    stages: _Stages
    cancel: CancelToken | None
    text: TextInputs
    """The text the DiT is conditioned on: the request's, with planner-filled fields."""
    params: dict[str, Any] = field(default_factory=dict)
    plans: list[Any] | None = None
    """`encore.pipeline.planning.Plan` per item when the planner ran."""


class _Stages:
    """Timings, progress reporting and cancellation checks at stage boundaries."""

    def __init__(self, progress: ProgressFn | None, cancel: CancelToken | None, device: torch.device) -> None:
        self.progress, self.cancel, self.device = progress, cancel, device
        self.timings: dict[str, float] = {}
        self.weights = dict(_STAGE_WEIGHTS)
        self._done = 0.0

    def with_planner(self) -> None:
        """Give the planner its share of the progress bar."""
        self.weights = {k: v * (1.0 - _PLAN_WEIGHT) for k, v in _STAGE_WEIGHTS.items()}
        self.weights["plan"] = _PLAN_WEIGHT

    def check_cancel(self, where: str) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"cancelled before {where}")

    def report(self, stage: str, fraction: float) -> None:
        if self.progress is not None:
            weight = self.weights.get(stage, 0.0)
            done = 1.0 if stage == "done" else self._done + weight * min(max(fraction, 0.0), 1.0)
            self.progress(stage, min(1.0, done))

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self.check_cancel(stage)
        self.report(stage, 0.0)
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":  # honest per-stage times: wait for queued kernels
            torch.cuda.synchronize(self.device)
        self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - start
        self._done += self.weights.get(stage, 0.0)
        self.report(stage, 0.0)


@dataclass(frozen=True)
class _Condition:
    """Encoded condition of one conditioning (cover has two): cross-attention K/V and the DiT context."""

    encoder_hidden_states: Tensor
    """[1, S, enc_H] packed condition."""
    context: Tensor
    """[B, T, 2C] cat(src latents, chunk mask)."""
    null_context: Tensor | None = None
    """The guidance's null-branch context where it differs from `context`: without the beat/key hints."""


class Pipeline:
    """ACE-Step 1.5 generation on one device.

    Args:
        components: Loaded modules (`encore.pipeline.loading.load_components`).
        planner: The 5 Hz LM (`encore.models.planner.Planner`) for requests with ``planner.think``; when None,
            the default LM folder next to the checkpoint is loaded on first use.
    """

    def __init__(self, components: Any, *, planner: Any = None) -> None:
        self.components = components
        self.planner = planner
        self.model = components.model
        self.vae = components.vae
        self.text_encoder = components.text_encoder
        self.tokenizer = components.text_tokenizer
        self.config = components.config
        self.vae_config = components.vae_config
        self.device: torch.device = components.device
        self.dtype: torch.dtype = components.dtype
        # build_conditioning needs the silence latent in the latents' dtype (official: cast to model dtype).
        self.silence = components.silence_latent.to(device=self.device, dtype=self.dtype)
        # The timbre reference of requests without reference audio, and its cached timbre vector (see
        # `_timbre_vectors`).
        self._silence_reference = self.silence[: self.config.timbre_fix_frame][None]
        self._silence_timbre: tuple[tuple[int, ...], Tensor] | None = None
        self._lora_ids: list[dict[str, Any]] = []

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = "auto",
                        dtype: str | torch.dtype | None = "auto", planner: str | Path | None = None,
                        **kwargs: Any) -> Pipeline:
        """Loads a checkpoint folder or preset name (see `encore.pipeline.loading.load_components`).

        Args:
            planner: Folder of a 5 Hz LM to load now; None loads the default one lazily when a request thinks.
        """
        from encore.pipeline.loading import load_components

        components = load_components(path, device=device, dtype=dtype, **kwargs)
        pipe = cls(components)
        if planner is not None:
            pipe.planner = pipe._load_planner(Path(planner))
        return pipe

    # ----------------------------------------------------------------------------- geometry
    @property
    def sample_rate(self) -> int:
        """Waveform rate of inputs and outputs (the VAE's, 48 kHz for released models)."""
        return int(self.vae_config.sampling_rate)

    @property
    def hop_samples(self) -> int:
        return int(self.vae_config.hop_samples)

    # ----------------------------------------------------------------------------- entry point
    def generate(self, request: GenerationRequest, *, progress: ProgressFn | None = None,
                 cancel: CancelToken | None = None) -> GenerationResult:
        """Runs `request` and returns the audio with every resolved parameter.

        Args:
            request: What to generate.
            progress: Called as ``progress(stage, fraction_of_whole_run)``.
            cancel: Polled between stages and denoising steps; when set, `Cancelled` is raised.

        Returns:
            `GenerationResult` with `audio [B, 2, S]` float32 on the CPU and `latents [B, T, C]`.

        Raises:
            InvalidRequest, AudioError, NumericalError, Cancelled.
        """
        stages = _Stages(progress, cancel, self.device)
        try:
            with torch.inference_mode():
                run = self._resolve(request, stages, cancel)
                if run.plans is not None:
                    with stages("plan"):
                        self._plan(run)
                with stages("load_audio"):
                    inputs = self._load_inputs(request)
                with stages("encode_audio"):
                    source_latents = self._encode_source(run, inputs)
                    timbre = self._timbre_latents(run, inputs)
                conds = self._conditionings(run, source_latents)
                with stages("encode_text"):
                    encoded = self._encode_conditions(run, conds, timbre)
                with stages("sample"):
                    sampled = self._sample(run, conds[0], encoded)
                latents = tc.assemble_latents(sampled, conds[0])
                postprocess.check_finite(latents, "DiT latents")
                with stages("decode"):
                    audio = self.decode_latents(latents)
                postprocess.check_finite(audio, "VAE decode")
                with stages("finish"):
                    audio = self._finish_audio(run, inputs, conds[0], audio)
        finally:
            # Success or not, the next request starts from the base model (adapters stay cached, disabled).
            adapters.release(self.model.decoder)
            self._lora_ids = []
        stages.report("done", 1.0)
        return GenerationResult(audio=audio.cpu(), sample_rate=self.sample_rate, seeds=run.seeds,
                                params=run.params, latents=latents.float().cpu(), plan=run.plans,
                                timings_s=stages.timings)

    # ----------------------------------------------------------------------------- stage 0: resolve
    def _resolve(self, request: GenerationRequest, stages: _Stages, cancel: CancelToken | None) -> _Run:
        """Fill defaults from the model variant, draw missing seeds, refuse what this build cannot do, and switch
        the request's LoRA adapters on (before anything computes the cross-attention K/V cache)."""
        thinking = request.planner is not None and request.planner.think
        if thinking and not isinstance(request.task, Text2Music):
            raise InvalidRequest("planner.think", "the planner writes audio codes for text2music only; the other "
                                                  "tasks take their structure from the source audio")
        if request.audio_codes is not None:
            if thinking:
                raise InvalidRequest("audio_codes", "planner.think writes its own audio codes; give codes or think")
            if not isinstance(request.task, (Text2Music, Cover)):
                raise InvalidRequest("audio_codes", "audio codes apply to text2music and cover only")
            if isinstance(request.task, Cover) and not request.task.quantize:
                raise InvalidRequest("task.quantize", "quantize=false keeps the source's latents, but audio codes "
                                                      "replace them; drop one")
        variant = self.components.variant
        if isinstance(request.task, BASE_ONLY_TASKS) and (variant.is_turbo or "sft" in variant.name):
            raise InvalidRequest("task", f"{kind_of(request.task)} needs a base model; the {variant.name} model was "
                                         "trained for text2music, cover, repaint and extend only")
        if isinstance(request.task, Text2Music) and request.text.duration_s is None and not thinking:
            duration = text2music_duration_s(request)  # given codes set the length, as the planner's do
            request = dataclasses.replace(request, text=dataclasses.replace(request.text, duration_s=duration))
        prompts.validate_language(request.text.language)
        sampling = self.resolve_sampling(request.diffusion)
        # Last check of this stage: every adapter file is read and matched to the DiT before any sampling.
        self._lora_ids = adapters.activate_request(self.model.decoder, request.loras)
        seeds = request.item_seeds() or tuple(secrets.randbelow(MAX_SEED + 1) for _ in range(request.batch_size))
        run = _Run(request=request, kind=kind_of(request.task), seeds=seeds, sampling=sampling, stages=stages,
                   cancel=cancel, text=request.text, plans=[] if thinking else None)
        if thinking:
            stages.with_planner()
        resolved = dataclasses.replace(
            request, seeds=seeds,
            diffusion=dataclasses.replace(
                request.diffusion, num_steps=sampling.num_steps, shift=sampling.shift,
                guidance_scale=sampling.guidance_scale, guidance=sampling.guidance, solver=sampling.solver,
                timesteps=None if request.diffusion.timesteps is None
                else tuple(float(t) for t in sampling.timesteps.float().tolist())))
        run.params = {
            "encore_version": __version__,
            "task": run.kind,
            "request": request_to_dict(resolved),
            "seeds": list(seeds),
            "model": self.model_info(),
            "sampling": {"timesteps": [float(t) for t in sampling.timesteps.float().tolist()],
                         "schedule_dtype": str(sampling.timesteps.dtype).removeprefix("torch."),
                         "noise": "cpu float32 randn per item, seeded torch.Generator"},
            "sample_rate": self.sample_rate,
        }
        return run

    def model_info(self) -> dict[str, Any]:
        """Model identity recorded in every result (and in the output files' tags).

        ``loras`` lists the adapters active for the current request: ``{"name", "scale", "sha256"}``
        (`encore.pipeline.adapters.activate_request`); empty between requests.
        """
        comp = self.components
        paths = getattr(comp, "paths", None)
        return {"variant": comp.variant.name, "is_turbo": comp.variant.is_turbo,
                "checkpoint": paths.dit.name if paths is not None else None,
                "dtype": str(self.dtype).removeprefix("torch."),
                "loras": [dict(lora_id) for lora_id in self._lora_ids]}

    def resolve_sampling(self, options: DiffusionOptions) -> SamplingPlan:
        """Resolve the request's diffusion options against the variant's defaults (SPEC §9.3–9.4).

        Raises:
            InvalidRequest: options a turbo model cannot honour (it always runs its 8-step table, without
                guidance); the request is refused rather than silently changed.
        """
        defaults = self.components.variant.defaults
        opts = dataclasses.replace(options, **{
            f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults)
            if getattr(options, f.name) is None})
        assert opts.num_steps is not None and opts.shift is not None and opts.guidance_scale is not None
        if self.components.variant.is_turbo:
            return self._turbo_sampling(options, opts)
        if options.timesteps is not None:
            # Base/SFT take a custom list as given (no turbo-grid snapping); the solver appends the final 0.
            values = list(options.timesteps)
            while values and values[-1] == 0.0:
                values.pop()
            if not values:
                raise InvalidRequest("diffusion.timesteps", "needs at least one non-zero timestep")
            timesteps = torch.tensor(values, dtype=self.dtype, device=self.device)
            self._check_steps(options.num_steps, len(values))
            num_steps = len(values)
        else:
            timesteps = schedules.shifted_linear_timesteps(opts.num_steps, opts.shift, dtype=self.dtype,
                                                           device=self.device)
            num_steps = opts.num_steps
        guided = opts.guidance_scale > 1.0
        if opts.solver == "sde":
            self._warn_on_mismatched_renoise(timesteps, num_steps)
        return SamplingPlan(timesteps=timesteps, num_steps=num_steps, shift=opts.shift,
                            guidance_scale=opts.guidance_scale, guidance=(opts.guidance or "apg") if guided else None,
                            cfg_interval=opts.cfg_interval, solver=opts.solver, guide_hints=opts.guide_hints)

    @staticmethod
    def _warn_on_mismatched_renoise(timesteps: Tensor, num_steps: int) -> None:
        """SPEC §9.4: the official base SDE renoises to the unshifted time 1 - (i+1)/N while the next step
        reads the schedule's own time. Kept for parity, but the two differ for any shift but 1 (or a custom
        list)."""
        renoise = torch.tensor(schedules.linear_renoise_times(num_steps), dtype=torch.float64)
        gap = float((timesteps[1:].double().cpu() - renoise).abs().max())
        if gap > 1e-3:
            log.warning("base-model SDE renoises to the unshifted linear times, as the official code does, "
                        "and this schedule is up to %.2f away from them; the embedded base collapses this "
                        "way at shift 3 (docs/model-card.md, Recipe step 32). Use shift 1 with sde, or the "
                        "ode solver.", gap)

    def _turbo_sampling(self, requested: DiffusionOptions, opts: DiffusionOptions) -> SamplingPlan:
        table_steps = len(schedules.TURBO_TIMESTEPS[1.0])
        if requested.guidance_scale is not None and requested.guidance_scale != 1.0:
            raise InvalidRequest("diffusion.guidance_scale",
                                 "turbo models are guidance-distilled; guidance applies to base/SFT models only")
        if requested.timesteps is not None:
            timesteps = schedules.snap_custom_timesteps(requested.timesteps, dtype=self.dtype, device=self.device)
            self._check_steps(requested.num_steps, int(timesteps.numel()))
            shift = opts.shift
        else:
            if requested.num_steps is not None and requested.num_steps != table_steps:
                raise InvalidRequest("diffusion.num_steps",
                                     f"turbo models always run their {table_steps}-step table; use timesteps for "
                                     "a custom schedule")
            shift = schedules.nearest_turbo_shift(opts.shift or 3.0)
            timesteps = schedules.turbo_timesteps(shift, dtype=self.dtype, device=self.device)
        return SamplingPlan(timesteps=timesteps, num_steps=int(timesteps.numel()), shift=float(shift),
                            guidance_scale=1.0, guidance=None, cfg_interval=opts.cfg_interval,
                            solver=opts.solver, guide_hints=opts.guide_hints)

    @staticmethod
    def _check_steps(num_steps: int | None, schedule_steps: int) -> None:
        # A resolved request records both the schedule and its length; any other combination is ambiguous.
        if num_steps is not None and num_steps != schedule_steps:
            raise InvalidRequest("diffusion.num_steps", f"{num_steps} contradicts the {schedule_steps} timesteps "
                                                        "given; give the timesteps alone")

    # ----------------------------------------------------------------------------- stage 0b: plan
    def _plan(self, run: _Run) -> None:
        """Let the 5 Hz LM fill the metas it may (`planner.fill`) and write each item's audio codes (§12)."""
        from encore.pipeline import planning

        opts, text = run.request.planner, run.request.text
        assert opts is not None
        fill = set(opts.fill)
        metas = planning.UserMetas(bpm=text.bpm, duration=text.duration_s, keyscale=text.keyscale,
                                   timesignature=text.timesignature,
                                   language=None if text.language == "unknown" else text.language)
        sampling = planning.LmSampling(temperature=opts.temperature, top_k=opts.top_k, top_p=opts.top_p,
                                       repetition_penalty=opts.repetition_penalty, cfg_scale=opts.cfg_scale,
                                       negative_prompt=opts.negative_prompt)
        plans = planning.plan(self._get_planner(), text.caption, text.lyrics, metas=metas, sampling=sampling,
                              seeds=run.seeds, use_cot_caption="caption" in fill,
                              use_cot_language="language" in fill, cancel=run.cancel)
        first = plans[0]  # phase 1 (the metas) is shared; items differ only in their codes

        def planned(name: str, value: Any) -> Any:
            user = getattr(text, name)
            return user if user is not None else (value if name in fill else None)

        run.text = dataclasses.replace(
            text, caption=first.caption, bpm=planned("bpm", first.bpm), keyscale=planned("keyscale", first.keyscale),
            timesignature=planned("timesignature", first.timesignature), duration_s=first.duration,
            language=first.language if text.language == "unknown" and first.language else text.language)
        run.plans = plans
        run.params["plan"] = [p.to_dict() for p in plans]
        run.params["planned_text"] = request_to_dict(run.text)

    def _get_planner(self) -> Any:
        if self.planner is None:
            from encore.pipeline.presets import DEFAULT_LM_DIR

            found = list(getattr(self.components.paths, "lm_dirs", ()))
            if not found:
                raise InvalidRequest("planner.think", "no 5 Hz LM (acestep-5Hz-lm-*) next to the checkpoint; "
                                                      "run `encore download turbo --with-lm` or pass a planner")
            preferred = [d for d in found if d.name == DEFAULT_LM_DIR] or found
            self.planner = self._load_planner(preferred[0])
        return self.planner

    def _load_planner(self, path: Path) -> Any:
        from encore.models.planner import Planner

        return Planner.from_pretrained(path, device=self.device)

    # ----------------------------------------------------------------------------- stage 1: audio in
    def _load_inputs(self, request: GenerationRequest) -> _Inputs:
        source_path = getattr(request.task, "source", None)
        codes_cover = isinstance(request.task, Cover) and request.audio_codes is not None
        if not isinstance(request.task, Text2Music) and source_path is None and not codes_cover:
            raise InvalidRequest("task.source", f"{kind_of(request.task)} needs a source audio file"
                                 + (" or audio codes" if isinstance(request.task, Cover) else ""))
        inputs = _Inputs()
        if source_path is not None:
            inputs.source = self.load_audio(source_path)
        if request.reference_audio is not None:
            inputs.reference = self.load_audio(request.reference_audio)
        return inputs

    def load_audio(self, path: str | Path) -> Tensor:
        """Reads an audio file as float32 `[2, S]` at the VAE rate (`encore.audio.io` validates it)."""
        from encore.audio import io

        wav, _ = io.load_audio(path, target_rate=self.sample_rate)
        return wav

    def encode_audio(self, audio: Tensor, *, generator: torch.Generator | None = None,
                     sample: bool = True) -> Tensor:
        """Waveform `[2, S]` or `[B, 2, S]` (VAE rate) -> latents `[B, S // hop, C]` in the model dtype.

        Uses the official 30 s / 2 s tiled encode. With `sample` the posterior is sampled (as the official
        handler does for source and reference audio) with noise from `generator` (CPU generators give
        device-independent latents); otherwise its mean is returned.
        """
        from encore.audio.tiling import encode_tiled

        wav = audio[None] if audio.dim() == 2 else audio
        # Without autograd, as inside `generate`: the CPU VAE then runs time-chunked (equal only to rounding).
        with self._cpu_heap(), torch.no_grad():
            posterior = encode_tiled(self.vae, wav.to(device=self.device, dtype=self.vae.dtype))
        latents = posterior.sample(generator) if sample else posterior.mode()
        return latents.transpose(1, 2).to(self.dtype)

    def posterior_generator(self, seeds: tuple[int, ...], stream: str) -> torch.Generator:
        """The CPU generator for one of a call's auxiliary random streams, derived from the first seed.

        Streams: ``source`` (posterior noise of the source encode), ``reference_window`` (segment offsets of
        the reference audio) and ``reference`` (its posterior noise). Each gets its own seed so none reuses
        the stream of item 0's initial noise.
        """
        salt = _STREAMS[stream]
        return torch.Generator("cpu").manual_seed((seeds[0] + salt * _SOURCE_SEED_SALT) % 2**64)

    def _encode_source(self, run: _Run, inputs: _Inputs) -> Tensor | None:
        if inputs.source is None:
            return None
        if inputs.source.shape[-1] < self.hop_samples:
            raise InvalidRequest("task.source", "source audio is shorter than one latent frame")
        return self.encode_audio(inputs.source, generator=self.posterior_generator(run.seeds, "source"))[0]

    def _timbre_latents(self, run: _Run, inputs: _Inputs) -> Tensor:
        """Reference latents `[1, Tr, C]`: three 10 s windows of the reference, or the silence default (§6)."""
        ref = inputs.reference
        if ref is None or not bool(ref.abs().amax() > 0):  # digital silence counts as no reference
            return self._silence_reference
        window = reference_window(ref, self.sample_rate, self.posterior_generator(run.seeds, "reference_window"))
        return self.encode_audio(window, generator=self.posterior_generator(run.seeds, "reference"))

    # ----------------------------------------------------------------------------- stage 2: conditioning
    def _conditionings(self, run: _Run, source_latents: Tensor | None) -> list[tc.Conditioning]:
        """The task's DiT context: one shared by the batch, or one per item when planned codes differ."""
        task = run.request.task
        if run.plans:
            hints = [self.codes_to_hints(plan.codes) for plan in run.plans]
            conds = [self._build(run, task, None, hints=h, num_frames=hints[0].shape[0]) for h in hints]
        else:
            num_frames = None
            if isinstance(task, Text2Music):
                assert run.text.duration_s is not None
                num_frames = tc.frames_for_duration(run.text.duration_s, self.hop_samples, self.sample_rate)
            if source_latents is not None:
                self._check_window(task, source_latents.shape[0])
            hints = None
            if run.request.audio_codes is not None:
                hints = self.codes_to_hints(run.request.audio_codes)
                if num_frames is not None:  # padded with silence or cropped to the duration (SPEC §10)
                    hints = tc.fit_frames(hints, num_frames, self.silence, allow_crop=True)
            conds = [self._build(run, task, source_latents, hints=hints, num_frames=num_frames)]
        cond = conds[0]
        run.params.update(num_frames=cond.num_frames, instruction=cond.instruction,
                          region_frames=list(cond.region) if cond.region else None)
        return conds

    def _beat_hints(self, run: _Run, task: Any, num_frames: int) -> Tensor | None:
        """Rule-written beat hints for text2music with a bpm, when the DiT was trained to read them (with the
        request's key too, if it gave one and the DiT reads key hints, and the instruments its caption names, if
        any and the DiT reads instrument hints)."""
        bpm = run.text.bpm
        if not self.config.beat_hints or not isinstance(task, Text2Music) or bpm is None:
            return None
        run.params["beat_hints"] = True
        keyscale = run.text.keyscale if self.config.key_hints else None
        if keyscale is not None:
            run.params["key_hints"] = True
        tracks = hint_tracks(run.text.caption) if self.config.instrument_hints else ()
        if tracks:
            run.params["instrument_hints"] = list(tracks)
        return beat_hints(self.silence, float(bpm), num_frames=num_frames, sample_rate=self.sample_rate,
                          hop_samples=self.hop_samples, keyscale=keyscale, tracks=tracks)

    def _build(self, run: _Run, task: Any, source_latents: Tensor | None, *, hints: Tensor | None,
               num_frames: int | None) -> tc.Conditioning:
        needed = num_frames if num_frames is not None else tc.content_frames(
            task, num_source_frames=None if source_latents is None else source_latents.shape[0],
            sample_rate=self.sample_rate, hop_samples=self.hop_samples,
            num_hint_frames=None if hints is None else hints.shape[0])
        if needed > self.silence.shape[0]:
            raise InvalidRequest("text.duration_s" if num_frames is not None else "task",
                                 f"{needed} latent frames exceed the checkpoint's silence latent "
                                 f"({self.silence.shape[0]} frames)")
        if hints is None and num_frames is not None:  # planned codes take priority over beat hints
            hints = self._beat_hints(run, task, num_frames)
        cond = tc.build_conditioning(task, source_latents=source_latents, silence_latent=self.silence,
                                     num_frames=num_frames, sample_rate=self.sample_rate,
                                     hop_samples=self.hop_samples, hint_latents=hints,
                                     full_span_mask_value=FULL_SPAN_MASK_VALUE)
        if cond.is_cover and not cond.src_is_hints and getattr(task, "quantize", True):
            cond = dataclasses.replace(cond, src_latents=self.fsq_round_trip(cond.src_latents))
        return cond

    def codes_to_hints(self, codes: Any) -> Tensor:
        """5 Hz audio codes (ints 0…63 999) -> 25 Hz latent hints `[5·n, C]` in the model dtype (SPEC §12.5)."""
        indices = torch.as_tensor(list(codes), dtype=torch.long, device=self.device)
        if indices.numel() == 0:
            raise InvalidRequest("planner", "the plan holds no audio codes")
        return self.model.codes_to_hints(indices[None, :, None])[0].to(self.dtype)

    def _check_window(self, task: Any, num_source_frames: int) -> None:
        """A repaint/lego window must overlap the source; one lying wholly outside it would leave a gap."""
        if not isinstance(task, (Repaint, Lego)):
            return
        duration = num_source_frames * self.hop_samples / self.sample_rate
        if tc.seconds_to_frame(max(task.start_s, 0.0), self.sample_rate, self.hop_samples) >= num_source_frames:
            raise InvalidRequest("task.start_s", f"window starts at {task.start_s:g} s, after the end of the "
                                                 f"source ({duration:.2f} s)")
        if task.end_s is not None and task.end_s <= 0:
            raise InvalidRequest("task.end_s", f"window ends at {task.end_s:g} s, before the source starts")

    def audio_codes(self, path: str | Path) -> list[int]:
        """An audio file's 5 Hz FSQ codes (SPEC §4, §7): what `understand` reads and `audio_codes` renders again.

        The waveform is VAE-encoded with the official tiled encode, taking the posterior mean (deterministic: no
        seed changes the codes), then the audio tokenizer pools 5 latent frames per code, padding the tail with
        the silence latent as the official tokenizer does.

        Raises:
            AudioError: unreadable, shorter than one latent frame, or longer than `MAX_UNDERSTAND_S`.
        """
        wav = self.load_audio(path)  # [2, S] at the VAE rate
        seconds = wav.shape[-1] / self.sample_rate
        if wav.shape[-1] < self.hop_samples:
            raise AudioError(str(path), f"is {seconds:.3f} s long, shorter than one latent frame")
        if seconds > MAX_UNDERSTAND_S:
            raise AudioError(str(path), f"is {seconds:.0f} s long; understand reads at most {MAX_UNDERSTAND_S:.0f} s")
        latents = self.encode_audio(wav, sample=False)  # [1, T, C]
        with torch.no_grad():
            _, indices = self.model.tokenizer.tokenize(latents, self.silence)  # [1, ceil(T / 5), 1]
        return [int(c) for c in indices[0, :, 0].tolist()]

    def fsq_round_trip(self, latents: Tensor) -> Tensor:
        """Cover context: latents `[T, C]` -> 5 Hz FSQ codes -> 25 Hz hints `[T, C]` (SPEC §7, §10)."""
        quantized, _ = self.model.tokenizer.tokenize(latents[None], self.silence)
        return self.model.detokenizer(quantized)[0, : latents.shape[0]].to(self.dtype)

    # ----------------------------------------------------------------------------- stage 3: text
    def _metas_duration(self, run: _Run, cond: tc.Conditioning) -> float:
        # Audio tasks describe the span the DiT renders; text2music the requested duration (SPEC §5.1).
        if isinstance(run.request.task, Text2Music):
            assert run.text.duration_s is not None
            return run.text.duration_s
        return cond.num_content_frames * self.hop_samples / self.sample_rate

    def prompt_texts(self, text: TextInputs, instruction: str, duration_s: float) -> tuple[str, str]:
        """The caption-branch and lyric-branch strings fed to the text encoder (byte-exact, SPEC §5)."""
        metas = prompts.format_metas(bpm=text.bpm, timesignature=text.timesignature, keyscale=text.keyscale,
                                     duration_s=duration_s)
        return (prompts.format_caption_prompt(instruction, text.caption, metas),
                prompts.format_lyric_prompt(text.language, text.lyrics))

    def _token_ids(self, text: str, max_length: int) -> Tensor:
        ids = self.tokenizer(text, truncation=True, max_length=max_length, return_tensors="pt").input_ids
        return ids.to(self.device)

    def encode_condition(self, text: TextInputs, instruction: str, duration_s: float, timbre: Tensor) -> Tensor:
        """Text + lyrics + timbre -> packed condition `[1, S, enc_H]` in the model dtype (SPEC §5–§6)."""
        caption, lyric = self.prompt_texts(text, instruction, duration_s)
        caption_ids = self._token_ids(caption, CAPTION_MAX_TOKENS)
        lyric_ids = self._token_ids(lyric, LYRIC_MAX_TOKENS)
        text_states = self.text_encoder.encode_caption(caption_ids).to(self.dtype)
        postprocess.check_finite(text_states, "text encoder")
        lyric_states = self.text_encoder.embed_lyrics(lyric_ids).to(self.dtype)
        ones = torch.ones  # masks: one unpadded item, every token valid
        states, _ = self.model.encoder(
            text_states, ones(caption_ids.shape, dtype=torch.long, device=self.device),
            lyric_states, ones(lyric_ids.shape, dtype=torch.long, device=self.device),
            timbre.to(self.dtype), torch.zeros(timbre.shape[0], dtype=torch.long, device=self.device),
            timbre_vectors=self._timbre_vectors(timbre))
        return states

    def _timbre_vectors(self, timbre: Tensor) -> Tensor | None:
        """The timbre vector of the silence reference, encoded once per state of the timbre encoder's weights;
        None (the encoder runs) for real reference audio.

        Most requests carry no reference audio, and the timbre encoder reads all 750 frames of the silence
        latent every time for the same answer: 33 of the 81 ms of the embedded model's text stage. The key is
        the parameters' version counters, which every in-place change (a training step, a weight load) bumps;
        LoRA adapters only touch the DiT decoder.
        """
        if timbre is not self._silence_reference or torch.is_grad_enabled():  # gradients must reach the encoder
            return None
        encoder = self.model.encoder.timbre_encoder
        key = tuple(p._version for p in encoder.parameters())
        if self._silence_timbre is None or self._silence_timbre[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor, usable outside inference mode
                self._silence_timbre = (key, encoder(timbre.to(self.dtype)))
        return self._silence_timbre[1]

    def _encode_conditions(self, run: _Run, conds: list[tc.Conditioning], timbre: Tensor) -> list[_Condition]:
        """The cover/main condition, plus the non-cover one when cover strength < 1 (SPEC §9.6).

        `conds` holds one shared conditioning or one per item (planned codes); text and instruction are the
        same for all items, so the text side is encoded once.
        """
        cond = conds[0]
        duration = self._metas_duration(run, cond)
        batch = run.request.batch_size
        states = self.encode_condition(run.text, cond.instruction, duration, timbre)
        null_context = None
        if run.params.get("beat_hints") and run.sampling.guidance is not None and run.sampling.guide_hints:
            # The same request without hints: a text2music context of silence under the same chunk mask.
            hint_free = dataclasses.replace(cond, src_latents=self.silence[: cond.num_frames])
            null_context = self._context([hint_free], batch)
        out = [_Condition(encoder_hidden_states=states, context=self._context(conds, batch),
                          null_context=null_context)]
        if cond.non_cover is not None:
            states = self.encode_condition(run.text, cond.non_cover.instruction, duration, timbre)
            out.append(_Condition(encoder_hidden_states=states, context=self._context([cond.non_cover], batch)))
        return out

    def _context(self, conds: list[tc.Conditioning], batch: int) -> Tensor:
        """`[B, T, 2C]` = cat(src latents, chunk mask repeated over channels), per item or broadcast."""
        channels = self.config.audio_acoustic_hidden_dim
        rows = [torch.cat([c.src_latents.to(self.dtype),
                           c.chunk_mask.to(self.dtype)[:, None].expand(-1, channels)], dim=-1) for c in conds]
        if len(rows) == 1:
            return rows[0][None].expand(batch, -1, -1)
        return torch.stack(rows)

    # ----------------------------------------------------------------------------- stage 4: sample
    def prepare_noise(self, seeds: tuple[int, ...], num_frames: int) -> Tensor:
        """Initial noise `[B, T, C]`: item i from `torch.Generator('cpu').manual_seed(seeds[i])`, float32 randn,
        then cast to the model dtype and device, so a seed means the same noise on every device."""
        channels = self.config.audio_acoustic_hidden_dim
        items = [torch.randn((1, num_frames, channels), generator=torch.Generator("cpu").manual_seed(s),
                             dtype=torch.float32) for s in seeds]
        return torch.cat(items).to(device=self.device, dtype=self.dtype)

    def _cross_kv(self, states: Tensor, batch: int) -> CrossKVCache:
        """K/V of a `[1, S, H]` condition, computed once and broadcast to the batch (reused every step)."""
        kv = self.model.decoder.precompute_cross_kv(states)
        return CrossKVCache(keys=tuple(k.expand(batch, -1, -1, -1) for k in kv.keys),
                            values=tuple(v.expand(batch, -1, -1, -1) for v in kv.values))

    def _velocity(self, run: _Run, cond: _Condition, rule: guidance.GuidanceRule | None) -> solvers.VelocityFn:
        """Velocity function of one condition; with guidance, cond and null run as one batched DiT call."""
        dit, batch = self.model.decoder, cond.context.shape[0]
        cond_kv = self._cross_kv(cond.encoder_hidden_states, batch)

        def cond_fn(x: Tensor, t: Tensor, step: int) -> Tensor:
            tt = t.to(self.dtype).expand(batch)
            return dit(x, tt, tt, None, cond.context, cross_kv=cond_kv)

        if rule is None:
            return cond_fn
        null_kv = self._cross_kv(self.model.null_condition(cond.encoder_hidden_states), batch)
        pair_kv = CrossKVCache(keys=tuple(torch.cat(p) for p in zip(cond_kv.keys, null_kv.keys)),
                               values=tuple(torch.cat(p) for p in zip(cond_kv.values, null_kv.values)))
        context2 = torch.cat([cond.context, cond.context if cond.null_context is None else cond.null_context])

        def pair_fn(x: Tensor, t: Tensor, step: int) -> tuple[Tensor, Tensor]:
            tt = t.to(self.dtype).expand(2 * batch)
            v = dit(torch.cat([x, x]), tt, tt, None, context2, cross_kv=pair_kv)
            return v[:batch], v[batch:]

        return guidance.with_paired_guidance(pair_fn, rule, interval=run.sampling.cfg_interval, cond_fn=cond_fn)

    def _sample(self, run: _Run, cond: tc.Conditioning, encoded: list[_Condition]) -> Tensor:
        """Flow-matching sampling from per-item seeded noise (SPEC §9)."""
        plan = run.sampling
        # One rule per run: with a cover switch both conditions share the APG momentum, as officially.
        rule = guidance.make_rule(plan.guidance, plan.guidance_scale) if plan.guidance else None  # type: ignore[arg-type]
        velocity = self._velocity(run, encoded[0], rule)
        num_solver_steps = plan.num_steps
        if len(encoded) > 1:
            assert isinstance(run.request.task, Cover)
            switch = solvers.cover_switch_step(num_solver_steps, run.request.task.cover_strength)
            velocity = solvers.switch_velocity_at(velocity, self._velocity(run, encoded[1], rule), switch)
            run.params["cover_switch_step"] = switch
        x = self.prepare_noise(run.seeds, cond.num_frames)

        def on_step(info: solvers.StepInfo, x: Tensor, denoised: Tensor) -> None:
            run.stages.report("sample", (info.index + 1) / info.num_steps)

        if plan.solver == "sde":
            gen = torch.Generator(self.device).manual_seed(run.seeds[0])
            renoise = None if self.components.variant.is_turbo else schedules.linear_renoise_times(plan.num_steps)
            return solvers.sample_sde(velocity, x, plan.timesteps, generator=gen, renoise_times=renoise,
                                      callback=on_step, cancel=run.cancel)
        return solvers.sample_euler(velocity, x, plan.timesteps, callback=on_step, cancel=run.cancel)

    # ----------------------------------------------------------------------------- stage 5: decode
    def decode_latents(self, latents: Tensor, *, on_tile: Callable[[int, int], None] | None = None) -> Tensor:
        """Latents `[B, T, C]` -> waveform `[B, 2, T * hop]` float32, with the official 512/64 tiled decode."""
        from encore.audio.tiling import decode_tiled

        with self._cpu_heap(), torch.no_grad():
            audio = decode_tiled(self.vae, latents.transpose(1, 2).to(self.vae.dtype), on_tile=on_tile)
        return audio.float()

    def _cpu_heap(self) -> AbstractContextManager[Any]:
        """On the CPU, VAE activations reuse freed heap memory within the call (`encore.utils.cpu_memory`).

        Only around the VAE: scoped over a whole generation the freed DiT blocks stayed resident next to the
        VAE's (peak RSS +1 GB in `make bench` at 10 s) for no measurable sampling gain.
        """
        return reused_heap() if self.device.type == "cpu" else nullcontext()

    # ----------------------------------------------------------------------------- stage 6: finish
    def _finish_audio(self, run: _Run, inputs: _Inputs, cond: tc.Conditioning, audio: Tensor) -> Tensor:
        out = run.request.output
        keep = self._wave_keep(run, inputs, cond)
        if keep is None:
            audio, infos = postprocess.normalize(audio, self.sample_rate, out.normalize,
                                                 target_lufs=out.target_lufs, true_peak_db=out.true_peak_db)
        else:
            # Only the generated window may be scaled: the kept source must stay bit-identical (peak safety
            # only; loudness targets would change the kept audio).
            peaks = postprocess.window_peak(audio, keep)
            gains = postprocess.peak_gain(peaks) if out.normalize != "none" else torch.ones_like(peaks)
            audio = torch.cat([postprocess.keep_source(a[None], keep, float(g)) for a, g in zip(audio, gains)])
            infos = [{"mode": "window-peak", "peak": float(p), "gain": float(g)} for p, g in zip(peaks, gains)]
        postprocess.check_finite(audio, "output audio")
        run.params["normalization"] = infos
        return audio

    def _wave_keep(self, run: _Run, inputs: _Inputs, cond: tc.Conditioning) -> postprocess.WaveKeep | None:
        """Sample-level placement of the kept source for repaint/extend, or None for other tasks."""
        task = run.request.task
        if cond.keep is None or cond.region is None or inputs.source is None:
            return None
        hop = self.hop_samples
        prefix = cond.keep.prefix.shape[0]
        start, end = (prefix + cond.region[0]) * hop, (prefix + cond.region[1]) * hop
        if isinstance(task, Repaint):
            offset = tc.seconds_to_frame(max(0.0, -task.start_s), self.sample_rate, hop) * hop
        elif isinstance(task, Extend) and task.side == "before":
            offset = end
        else:
            offset = 0
        return postprocess.WaveKeep(source=inputs.source, offset=offset, generated=(start, end),
                                    crossfade=tc.DEFAULT_CROSSFADE_FRAMES * hop)


def reference_window(audio: Tensor, sample_rate: int, generator: torch.Generator) -> Tensor:
    """The 30 s timbre input from a reference `[2, S]` (official `process_reference_audio`, SPEC §6).

    The audio is repeated to at least 30 s, split into thirds, and a 10 s segment is taken from each third
    at an offset drawn from `generator` (official: random offsets; diffusers uses fixed ones, SPEC §14.4).
    """
    total, seg = int(REFERENCE_TOTAL_S * sample_rate), int(REFERENCE_SEGMENT_S * sample_rate)
    if audio.shape[-1] < total:
        audio = audio.repeat(1, math.ceil(total / audio.shape[-1]))
    length = audio.shape[-1]
    third = length // 3

    def offset(room: int) -> int:
        return int(torch.randint(0, max(0, room) + 1, (1,), generator=generator))

    starts = (offset(third - seg), third + offset(third - seg), 2 * third + offset(length - 2 * third - seg))
    return torch.cat([audio[:, s: s + seg] for s in starts], dim=-1)
