"""`run_eval` end to end on a synthetic corpus: an oracle pipeline must beat a noise pipeline on every metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.eval_synth import SYNTH_CAPTIONS, FakePipeline, synth_prompt_set

from encore.errors import InvalidRequest
from encore.eval.run import SystemSpec, parse_system, request_for, run_eval


@pytest.fixture(scope="module")
def report_and_fakes(synth_corpus: Path, tmp_path_factory: pytest.TempPathFactory):
    fakes: dict[str, FakePipeline] = {}

    def factory(variant: str) -> FakePipeline:
        fakes[variant] = FakePipeline("oracle" if variant in ("base", "turbo") else "noise")
        return fakes[variant]

    systems = [
        SystemSpec("base-4", "base", 4),
        SystemSpec("turbo-2", "turbo", 2),
        SystemSpec("random", "random", 2),
    ]
    out = tmp_path_factory.mktemp("eval_out")
    report = run_eval(factory, prompts=synth_prompt_set(), corpus_dir=synth_corpus, out_dir=out, systems=systems,
                      include_renders=False, seed=7)  # fmt: skip
    return report, fakes, out


def test_oracle_beats_noise_on_every_metric(report_and_fakes) -> None:
    report, _, _ = report_and_fakes
    base, floor = report.row("base-4"), report.row("random")
    assert base.role == "model" and floor.role == "floor" and base.num_items == 4
    assert base.tempo["acc1"] >= 0.75 and floor.tempo["acc1"] <= 0.25
    assert base.tempo["pulse"] > floor.tempo["pulse"] + 0.2  # the oracle's clips have a beat, noise has none
    assert base.key["exact"] >= 0.75 and floor.key["exact"] <= 0.25
    assert (
        base.instrument["accuracy"] >= 0.75
        and base.instrument["accuracy"] > floor.instrument["accuracy"] + 0.3
    )
    assert base.frechet is not None and floor.frechet is not None and base.frechet < floor.frechet
    assert base.seconds_per_item is not None and base.realtime_factor is not None


def test_requests_carry_prompt_metas_steps_and_seeds(report_and_fakes) -> None:
    _, fakes, _ = report_and_fakes
    requests = fakes["turbo"].requests[1:]  # [0] is the untimed warm-up
    assert [r.seeds for r in requests] == [(7,), (8,), (9,), (10,)]
    assert [r.text.bpm for r in requests] == [96, 128, 112, 140]
    assert requests[1].text.keyscale == "A minor" and requests[1].text.timesignature == 4
    assert all(r.diffusion.num_steps == 2 and r.text.duration_s == 5.0 for r in requests)
    assert fakes["base"].requests[1].diffusion.num_steps == 4


def test_report_files_comparison_and_probe(report_and_fakes) -> None:
    report, _, out = report_and_fakes
    data = json.loads((out / "eval.json").read_text())
    assert [s["name"] for s in data["systems"]] == ["base-4", "turbo-2", "random"]
    assert data["prompts"]["count"] == 4 and data["prompts"]["caption_overlap"] == 0
    md = (out / "eval.md").read_text()
    assert md.startswith("| system |") and "random (floor)" in md and "turbo-2 vs base-4" in md
    comparison = report.comparison
    assert comparison["within_tolerance"] is True and comparison["speedup"] > 0
    assert set(report.probe["classes"]) == {"bass", "drums", "keyboard"}
    assert min(report.probe["validation_accuracy"].values()) >= 0.8
    assert (out / "probe.safetensors").is_file() and (out / "probe.json").is_file()
    assert report.probe["reference_clips"] >= 2
    # Each model row says how its pipeline sampled (the fakes resolve like a turbo: shift 3, SDE).
    assert report.row("turbo-2").sampling == {"num_steps": 2, "shift": 3.0, "solver": "sde", "guidance_scale": 1.0}
    assert data["systems"][0]["sampling"]["num_steps"] == 4
    assert "- sampling as run: base-4 4 steps, shift 3, sde; turbo-2 2 steps, shift 3, sde; random 2 steps" in md


def test_saved_probe_is_reused_and_limit_applies(
    report_and_fakes, synth_corpus: Path, tmp_path: Path
) -> None:
    _, _, out = report_and_fakes
    report = run_eval(lambda v: FakePipeline("oracle"), prompts=synth_prompt_set(), corpus_dir=synth_corpus,
                      out_dir=tmp_path, systems=[SystemSpec("turbo-8", "turbo", 8)], include_renders=False,
                      probe_path=out / "probe", limit=2, duration_s=4.5)  # fmt: skip
    assert report.probe["loaded_from"].endswith("probe") and report.row("turbo-8").num_items == 2
    assert report.comparison is None


def test_corpus_with_the_held_out_seed_is_refused(synth_corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="held-out seed"):
        run_eval(lambda v: FakePipeline("oracle"), prompts=synth_prompt_set(seed=0), corpus_dir=synth_corpus,
                 out_dir=tmp_path, systems=[], include_renders=False)  # fmt: skip


def test_parse_system_and_request() -> None:
    assert parse_system("base-50") == SystemSpec("base-50", "base", 50)
    assert parse_system("turbo") == SystemSpec("turbo", "turbo", None)
    assert parse_system("random").is_floor
    assert parse_system("turbo-8@2") == SystemSpec("turbo-8@2", "turbo", 8, 2.0)
    assert request_for(synth_prompt_set().prompts[0], parse_system("base-20@1.5"), 0, None).diffusion.shift == 1.5
    assert parse_system("turbo-8@2:sde") == SystemSpec("turbo-8@2:sde", "turbo", 8, 2.0, "sde")
    assert parse_system("turbo:ode").solver == "ode"
    assert parse_system("base-50@2:ode:g4.5") == SystemSpec("base-50@2:ode:g4.5", "base", 50, 2.0, "ode", 4.5)
    guided = request_for(synth_prompt_set().prompts[0], parse_system("base-50:g4"), 0, None).diffusion
    assert guided.guidance_scale == 4.0 and guided.solver is None
    sde = request_for(synth_prompt_set().prompts[0], parse_system("turbo-8:sde"), 0, None).diffusion
    assert sde.solver == "sde" and sde.num_steps == 8
    plain = request_for(synth_prompt_set().prompts[0], parse_system("base-50:g4:no-guide-hints"), 0, None)
    plain = plain.diffusion
    assert plain.guide_hints is False and plain.guidance_scale == 4.0 and guided.guide_hints is True
    for bad in ("-3", "base-0", "base-x", "turbo-8@0.5", "turbo-8@x", "turbo@", "turbo-8:euler", "turbo-8:",
                "base-50:g0.5", "base-50:g", "base-50:g4:sde", "base-50:no-guide-hints:g4"):
        with pytest.raises(InvalidRequest):
            parse_system(bad)
    req = request_for(synth_prompt_set().prompts[0], SystemSpec("b", "base", 50), 3, None)
    assert req.text.caption == SYNTH_CAPTIONS[("keyboard",)] and req.text.lyrics == "[Instrumental]"
    assert req.seeds == (3,) and req.diffusion.num_steps == 50 and req.text.duration_s == 5.0
    assert req.diffusion.shift is None and req.diffusion.solver is None  # the variant's defaults


def test_corpus_features_are_cached_per_manifest(synth_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    from encore.data import corpus
    from encore.eval.run import corpus_features

    cache = tmp_path / "features.npz"
    feats, indices, labels = corpus_features(synth_corpus, 5, cache=cache)
    assert feats.shape[0] == 5 and list(indices) == [lab.index for lab in labels] == list(range(5))

    def no_reading(*args, **kwargs):
        raise AssertionError("features were recomputed")

    monkeypatch.setattr(corpus, "iter_clips", no_reading)
    again, _, labels_again = corpus_features(synth_corpus, 5, cache=cache)
    assert (again == feats).all() and labels_again == labels
    with pytest.raises(AssertionError, match="recomputed"):
        corpus_features(synth_corpus, 6, cache=cache)  # another key


class _RoundTrip:
    """Stands in for a pipeline's VAE calls: `encode_audio` keeps the audio (or silences it) as `[B, S, C]`
    "latents", `decode_latents` turns them back into `[B, C, S]`."""

    sample_rate = 16_000

    def __init__(self, lossy: bool) -> None:
        self.lossy = lossy

    def encode_audio(self, audio, *, sample: bool = True):
        assert audio.dim() == 2 and not sample
        return (audio * 0.0 if self.lossy else audio)[None].transpose(1, 2)

    def decode_latents(self, latents):
        return latents.transpose(1, 2).float()


def test_reconstruction_row_scores_renders_through_the_vae(synth_corpus: Path, tmp_path: Path) -> None:
    import types

    from helpers.eval_synth import RATE, synth_song

    from encore.eval.run import _reconstruction_row, _render_row, build_scorer

    prompts = synth_prompt_set().prompts
    labels = [types.SimpleNamespace(bpm=p.bpm, keyscale=p.keyscale, tracks=p.tracks) for p in prompts]
    clips = [types.SimpleNamespace(mix=synth_song(p.bpm, p.keyscale, p.tracks, 5.0, seed=k), labels=lab)
             for k, (p, lab) in enumerate(zip(prompts, labels))]  # fmt: skip
    scorer = build_scorer(synth_corpus, tmp_path)
    rendered, _ = _render_row(prompts, clips, scorer, RATE)
    kept, _ = _reconstruction_row(_RoundTrip(lossy=False), prompts, clips, scorer, RATE)
    lost, _ = _reconstruction_row(_RoundTrip(lossy=True), prompts, clips, scorer, RATE)
    assert [i.key for i in kept] == [i.key for i in rendered] and sum(i.key == "exact" for i in kept) >= 3
    assert [i.tempo for i in kept] == [i.tempo for i in rendered]
    assert sum(i.key == "exact" for i in lost) == 0 and sum(i.tempo == "exact" for i in lost) == 0
    with pytest.raises(InvalidRequest, match="VAE runs at"):
        _reconstruction_row(_RoundTrip(lossy=False), prompts, clips, scorer, 48_000)


def test_the_reconstruction_row_reuses_the_model_rows_pipeline() -> None:
    from encore.eval.run import remembering

    loads: list[str] = []

    def factory(variant: str) -> str:
        loads.append(variant)
        return f"{variant} #{len(loads)}"

    wrapped, kept = remembering(factory, "base")
    assert wrapped("turbo") == "turbo #1" and wrapped("base") == "base #2" and wrapped("base") == "base #3"
    assert kept == ["base #2"]  # the first base the model rows loaded, kept for the reconstruction row
    none, nothing = remembering(factory, None)
    none("base")
    assert nothing == []


@pytest.mark.parametrize("interleave", [True, False])
def test_model_rows_are_timed_interleaved_and_give_the_same_items(
    report_and_fakes, synth_corpus: Path, tmp_path: Path, interleave: bool
) -> None:
    """Interleaved, base and turbo alternate prompt by prompt (order rotating) with the floor after them;
    sequential, one system after another. The seeds, items and scores do not depend on it."""
    reference, _, out = report_and_fakes
    calls: list[tuple[str, int]] = []

    class Logged(FakePipeline):
        def __init__(self, variant: str) -> None:
            super().__init__("oracle" if variant in ("base", "turbo") else "noise")
            self.variant = variant

        def generate(self, request):
            calls.append((self.variant, request.seeds[0]))
            return super().generate(request)

    systems = [SystemSpec("base-4", "base", 4), SystemSpec("turbo-2", "turbo", 2),
               SystemSpec("random", "random", 2)]  # fmt: skip
    report = run_eval(Logged, prompts=synth_prompt_set(), corpus_dir=synth_corpus, out_dir=tmp_path,
                      systems=systems, include_renders=False, seed=7, probe_path=out / "probe",
                      interleave=interleave)  # fmt: skip
    assert report.row("turbo-2").stage_seconds == {"sample": 0.5, "decode": 0.25}  # the pipeline's split
    warmed: set[str] = set()
    seen: list[tuple[str, int]] = []
    for variant, seed in calls:  # each system's first call is its untimed warm-up
        if variant in warmed:
            seen.append((variant, seed))
        warmed.add(variant)
    if interleave:
        assert seen[:8] == [("base", 7), ("turbo", 7), ("turbo", 8), ("base", 8),
                            ("base", 9), ("turbo", 9), ("turbo", 10), ("base", 10)]  # fmt: skip
        assert calls[:2] == [("base", 7), ("turbo", 7)]  # both loaded and warmed up before any timing
    else:
        assert [v for v, _ in seen[:8]] == ["base"] * 4 + ["turbo"] * 4
    assert seen[8:] == [("random", s) for s in (7, 8, 9, 10)]
    assert report.comparison["timing"] == ("interleaved" if interleave else "sequential")
    for name in ("base-4", "turbo-2", "random"):
        assert [(i.tempo, i.key) for i in report.row(name).items] == [
            (i.tempo, i.key) for i in reference.row(name).items
        ]


def test_scoring_runs_numpy_blas_single_threaded(synth_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """Multi-threaded BLAS workers spin after scoring and slow the next timed generate call (`_Scorer.score`)."""
    from helpers.eval_synth import RATE, synth_song
    from threadpoolctl import threadpool_info, threadpool_limits

    from encore.eval import run

    scorer = run.build_scorer(synth_corpus, tmp_path)
    seen: list[int] = []
    analyze = run.analysis.analyze_clip

    def recording(audio, sample_rate):
        seen.extend(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")
        return analyze(audio, sample_rate)

    monkeypatch.setattr(run.analysis, "analyze_clip", recording)
    prompt = synth_prompt_set().prompts[0]
    with threadpool_limits(limits=2, user_api="blas"):
        item, _ = scorer.score(prompt.id, synth_song(prompt.bpm, prompt.keyscale, prompt.tracks, 3.0), RATE, prompt)
        after = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert seen and set(seen) == {1}
    assert item.prompt_id == prompt.id and set(after) == {2}  # the caller's setting comes back


def test_timed_calls_run_back_to_back_and_scoring_follows(synth_corpus: Path, tmp_path: Path, monkeypatch) -> None:
    """No scoring between the timed generate calls (it slowed the next call); clips are scored afterwards, in
    the same order, and the saved audio is written then."""
    from encore.eval import run

    events: list[str] = []

    class Logged(FakePipeline):
        def generate(self, request):
            events.append("generate")
            return super().generate(request)

    analyze = run.analysis.analyze_clip

    def scoring(audio, sample_rate):
        events.append("score")
        return analyze(audio, sample_rate)

    monkeypatch.setattr(run.analysis, "analyze_clip", scoring)
    systems = [SystemSpec("base-4", "base", 4), SystemSpec("turbo-2", "turbo", 2)]
    report = run_eval(lambda v: Logged("oracle"), prompts=synth_prompt_set(), corpus_dir=synth_corpus,
                      out_dir=tmp_path, systems=systems, include_renders=False, save_audio=True, seed=7)  # fmt: skip
    calls = 2 + 2 * 4  # two warm-ups, then 4 prompts x 2 systems
    assert events == ["generate"] * calls + ["score"] * 8
    assert [i.prompt_id for i in report.row("turbo-2").items] == [p.id for p in synth_prompt_set().prompts]
    assert len(list((tmp_path / "audio" / "turbo-2").glob("*.flac"))) == 4


def test_sampling_of_records_guide_hints_only_where_it_acts() -> None:
    from types import SimpleNamespace

    from encore.eval.run import sampling_of

    diffusion = {"num_steps": 50, "shift": 3.0, "solver": "ode", "guidance": "apg", "guidance_scale": 7.0,
                 "guide_hints": False}  # fmt: skip
    hinted = SimpleNamespace(params={"request": {"diffusion": diffusion}, "beat_hints": True})
    assert sampling_of(hinted)["guide_hints"] is False
    unhinted = SimpleNamespace(params={"request": {"diffusion": diffusion}})
    assert "guide_hints" not in sampling_of(unhinted)
    turbo = {**diffusion, "guidance": None, "guidance_scale": 1.0}
    unguided = SimpleNamespace(params={"request": {"diffusion": turbo}, "beat_hints": True})
    assert "guide_hints" not in sampling_of(unguided)
