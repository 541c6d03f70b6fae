"""Planner modes end to end on the tiny random planner (CPU, fp32, a few seconds of codes)."""

from __future__ import annotations

import threading

import pytest

from encore.errors import Cancelled, EncoreError, InvalidRequest
from encore.models.planner import Planner
from encore.pipeline import planner_prompts as P
from encore.pipeline.planning import (
    Formatted,
    LmSampling,
    Plan,
    SampleIdea,
    Understanding,
    UserMetas,
    create_sample,
    format_sample,
    generate_tokens,
    plan,
    understand,
)
from encore.sampling.constrained import KEYSCALES, LANGUAGES, TIME_SIGNATURES, ConstraintSpec

FAST = LmSampling(max_caption_tokens=6)
"""Official defaults (CFG 2, T 0.85, top-p 0.9) with short captions to keep random decodes short."""
FAST_WRITE = LmSampling(cfg_scale=1.0, max_caption_tokens=6, max_genres_tokens=4, max_new_tokens=90)


class Exploding:
    """A planner stand-in that fails if anything touches it: proves validation runs first."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"model touched ({name}) before validation")


def _valid_metas(r: Plan | Understanding | SampleIdea | Formatted) -> None:
    assert 30 <= r.bpm <= 300 and r.keyscale in KEYSCALES and r.timesignature in TIME_SIGNATURES
    assert r.language is None or r.language in LANGUAGES
    assert r.caption.strip()


def test_plan_batch_user_fields_win_and_exact_code_count(tiny_planner: Planner) -> None:
    metas = UserMetas(bpm=97, keyscale="D minor", duration=2.2, language="de")
    plans = plan(tiny_planner, "A warm house track", "[Verse]\nla la", metas=metas, sampling=FAST, seeds=[3, 4])
    assert [p.seed for p in plans] == [3, 4]
    for p in plans:
        _valid_metas(p)
        assert (p.bpm, p.keyscale, p.duration, p.language) == (97, "D minor", 2.2, "de")
        assert len(p.codes) == 11 and all(0 <= c < 64_000 for c in p.codes)
        assert "bpm: 97\n" in p.cot and "duration: 2\n" in p.cot and "keyscale: D minor\n" in p.cot
        assert p.cot == plans[0].cot  # one CoT for the batch
    assert plans[0].codes != plans[1].codes
    assert Plan.from_yaml(plans[0].to_yaml()) == plans[0]


def test_plan_skips_phase1_when_user_fixed_the_four_metas(tiny_planner: Planner) -> None:
    metas = UserMetas.parse(bpm="100", duration="1", keyscale="c MAJOR", timesignature="4/4")
    (p,) = plan(tiny_planner, "my caption", metas=metas, sampling=FAST, seeds=[0])
    assert p.cot == "<think>\nbpm: 100\nduration: 1\nkeyscale: C major\ntimesignature: 4\n</think>"
    assert p.caption == "my caption" and p.language is None and len(p.codes) == 5
    (meta_only,) = plan(Exploding(), "my caption", metas=metas, generate_codes=False)  # type: ignore[arg-type]
    assert meta_only.codes == () and meta_only.bpm == 100


def test_head_slicing_gives_identical_samples(tiny_planner: Planner) -> None:
    kwargs = {"metas": UserMetas(duration=3), "seeds": [11]}
    sliced = plan(tiny_planner, "dreamy ambient", sampling=FAST, **kwargs)
    full = plan(tiny_planner, "dreamy ambient", sampling=LmSampling(max_caption_tokens=6, use_head_slicing=False),
                **kwargs)
    assert sliced == full
    spec = ConstraintSpec(cot=False, tail="codes", target_codes=40)
    runs = [generate_tokens(tiny_planner, [P.codes_prompt("c", "l", sliced[0].cot)] * 2,
                            uncond_prompts=[P.codes_uncond_prompt("c", "l", None)] * 2, specs=[spec] * 2,
                            sampling=LmSampling(use_head_slicing=flag, top_p=0.95, top_k=500), seeds=[1, 2],
                            max_new_tokens=41)[0] for flag in (True, False)]
    assert runs[0] == runs[1] and all(len(r) == 41 for r in runs[0])


def test_seeds_reproduce(tiny_planner: Planner) -> None:
    a = plan(tiny_planner, "rock", metas=UserMetas(duration=1), sampling=FAST, seeds=[5])
    b = plan(tiny_planner, "rock", metas=UserMetas(duration=1), sampling=FAST, seeds=[5])
    c = plan(tiny_planner, "rock", metas=UserMetas(duration=1), sampling=FAST, seeds=[6])
    assert a == b and a[0].codes != c[0].codes


def test_plan_variants_run(tiny_planner: Planner) -> None:
    s = LmSampling(cfg_scale=1.0, repetition_penalty=1.3, top_k=20, temperature=0.0, max_caption_tokens=4,
                   negative_prompt="noisy")
    (p,) = plan(tiny_planner, "jazz", "x", metas=UserMetas(duration=1), sampling=s, phase2_prompt="legacy",
                use_cot_caption=False, use_cot_language=False)
    _valid_metas(p)
    assert p.caption == "jazz" and p.language is None and "caption:" not in p.cot and len(p.codes) == 5
    with pytest.raises(EncoreError, match="max_new_tokens"):
        plan(tiny_planner, "jazz", sampling=LmSampling(use_constrained_decoding=False, max_new_tokens=8))


def test_understand(tiny_planner: Planner) -> None:
    u = understand(tiny_planner, [1, 2, 3, 63_999], sampling=LmSampling(temperature=0.3, top_p=None, cfg_scale=1.0,
                                                                        max_caption_tokens=6, max_genres_tokens=4,
                                                                        max_new_tokens=90))
    assert isinstance(u, Understanding)
    _valid_metas(u)
    assert 10 <= u.duration <= 600 and u.language in LANGUAGES and u.genres
    assert "<|audio_code_" not in u.lyrics and "<think>" not in u.lyrics
    assert Understanding.from_yaml(u.to_yaml()) == u


def test_create_sample(tiny_planner: Planner) -> None:
    s = create_sample(tiny_planner, "a soft love song", instrumental=True, language="ja", sampling=FAST_WRITE,
                      seed=2)
    assert isinstance(s, SampleIdea) and s.instrumental and s.language == "ja" and s.lyrics
    _valid_metas(s)
    with pytest.raises(InvalidRequest) as err:
        create_sample(Exploding(), "q", language="klingon")  # type: ignore[arg-type]
    assert err.value.field == "language"


def test_format_sample_keeps_user_metas(tiny_planner: Planner) -> None:
    f = format_sample(tiny_planner, "latin pop", "[Verse]\nhola", metas=UserMetas(bpm=128, language="es"),
                      sampling=FAST_WRITE, seed=4)
    assert isinstance(f, Formatted) and f.bpm == 128 and f.language == "es" and f.lyrics
    _valid_metas(f)


@pytest.mark.parametrize(("raw", "field"), [
    ({"bpm": "fast"}, "bpm"), ({"bpm": 12}, "bpm"), ({"bpm": True}, "bpm"), ({"keyscale": "H major"}, "keyscale"),
    ({"duration": -3}, "duration"), ({"duration": "long"}, "duration"), ({"duration": float("nan")}, "duration"),
    ({"timesignature": "5/4"}, "timesignature"), ({"timesignature": "waltz"}, "timesignature"),
    ({"language": "xx"}, "language"),
])
def test_malformed_metas_rejected_with_field_name(raw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        UserMetas.parse(**raw)  # type: ignore[arg-type]
    assert err.value.field == field


def test_requests_validated_before_the_model_runs() -> None:
    bad_calls = [
        (lambda: plan(Exploding(), 42), "caption"),  # type: ignore[arg-type]
        (lambda: plan(Exploding(), "c", seeds=[]), "seeds"),  # type: ignore[arg-type]
        (lambda: understand(Exploding(), [64_000]), "codes"),  # type: ignore[arg-type]
        (lambda: understand(Exploding(), []), "codes"),  # type: ignore[arg-type]
        (lambda: LmSampling(temperature=-1.0), "sampling.temperature"),
        (lambda: LmSampling(top_p=1.5), "sampling.top_p"),
        (lambda: UserMetas(bpm=400), "bpm"),
        (lambda: UserMetas(keyscale="F# Minor"), "keyscale"),
    ]
    for call, field in bad_calls:
        with pytest.raises(InvalidRequest) as err:
            call()
        assert err.value.field == field
    assert UserMetas.parse(language="unknown").language is None
    assert UserMetas.parse(keyscale=" f# MINOR ", bpm="120", duration="30.5").keyscale == "F# minor"


def test_cancel(tiny_planner: Planner) -> None:
    token = threading.Event()
    token.set()
    with pytest.raises(Cancelled):
        plan(tiny_planner, "c", sampling=FAST, cancel=token)


def test_batch_rows_in_different_states(tiny_planner: Planner) -> None:
    """Rows whose constraints differ share one forward pass; each still obeys its own state machine."""
    specs = [ConstraintSpec(cot=False, tail="codes", target_codes=7),
             ConstraintSpec(fields=("bpm", "duration", "keyscale", "timesignature"), user_values={"bpm": "99"})]
    prompts = [P.codes_prompt("c", "l", "<think>\nbpm: 99\n</think>"), P.cot_prompt("c", "l")]
    ids, done = generate_tokens(tiny_planner, prompts, uncond_prompts=[P.cot_uncond_prompt("l", None)] * 2,
                                specs=specs, sampling=LmSampling(), seeds=[0, 1], max_new_tokens=60)
    v = tiny_planner.vocab
    assert done == [True, True]
    assert len(ids[0]) == 8 and ids[0][-1] == v.eos_id and all(v.code_of(t) is not None for t in ids[0][:-1])
    cot = P.parse_cot(tiny_planner.decode(ids[1][1:ids[1].index(v.think_end_id)]))
    assert cot["bpm"] == 99 and set(cot) == {"bpm", "duration", "keyscale", "timesignature"}
    assert ids[1][-1] == v.eos_id


def test_server_understand_returns_the_songs_codes(tiny_planner: Planner) -> None:
    """The server's understand mode also returns the codes it read, so a client can render them again."""
    from types import SimpleNamespace

    from encore.frontends.server.worker import CancelFlag, run_planner

    pipeline = SimpleNamespace(planner=tiny_planner, audio_codes=lambda audio: [1, 2, 3, 63_999])
    out = run_planner(pipeline, "understand", {"audio": "song.wav"}, progress=lambda stage, f: None,
                      cancel=CancelFlag())  # fmt: skip
    assert out["codes"] == [1, 2, 3, 63_999] and "caption" in out and "duration" not in out
