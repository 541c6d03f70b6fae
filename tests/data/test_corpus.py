from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

mido = pytest.importorskip("mido")
sf = pytest.importorskip("soundfile")

from encore.data.arrange import SCALES
from encore.data.corpus import build_corpus, clip_dir, generate_clip, iter_clips, read_manifest
from encore.data.labels import parse_keyscale
from encore.data.plan import CorpusConfig
from encore.errors import InvalidRequest

SECONDS = 4.0


def _cfg(soundfont: str, **kw) -> CorpusConfig:
    return CorpusConfig(
        soundfonts=(soundfont,), folk_collections=("oneills1850",), polyphony_collections=("bach",), **kw
    )


def _hashes(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "cache" not in p.parts
    }


@pytest.fixture(scope="module")
def corpus(all_tools, tmp_path_factory):
    """Three 4-s clips of seed 0 (a chorale, a procedural band and an MMA groove)."""
    out = tmp_path_factory.mktemp("corpus")
    summary = build_corpus(out, num_clips=3, seed=0, clip_seconds=SECONDS, config=_cfg(all_tools))
    return out, summary


def test_build_summary_and_manifest(corpus):
    out, summary = corpus
    assert summary["clips"] == 3 and summary["rendered"] == 3 and summary["skipped"] == 0
    labels = read_manifest(out)
    assert [lab.index for lab in labels] == [0, 1, 2]
    assert {lab.source for lab in labels} == {"chorale", "procedural", "mma"}
    meta = json.loads((out / "corpus.json").read_text())
    assert meta["seed"] == 0 and meta["config"]["clip_seconds"] == SECONDS


def test_same_seed_gives_identical_files_in_parallel(corpus, tmp_path):
    out, _ = corpus
    build_corpus(tmp_path, num_clips=3, seed=0, clip_seconds=SECONDS, workers=2, config=_cfg("TimGM6mb"))
    assert _hashes(tmp_path) == _hashes(out)


def test_resume_skips_done_clips_and_extension_keeps_them(corpus, tmp_path):
    out, _ = corpus
    work = tmp_path / "c"
    shutil.copytree(out, work)
    before = _hashes(work)
    shutil.rmtree(clip_dir(work, 1))
    (work / "manifest.jsonl").unlink()
    summary = build_corpus(work, num_clips=3, seed=0, clip_seconds=SECONDS, config=_cfg("TimGM6mb"))
    assert (summary["rendered"], summary["skipped"]) == (1, 2)
    assert _hashes(work) == before
    summary = build_corpus(work, num_clips=4, seed=0, clip_seconds=SECONDS, config=_cfg("TimGM6mb"))
    assert (summary["rendered"], summary["skipped"]) == (1, 3)
    after = _hashes(work)
    assert {k: v for k, v in after.items() if k in before and k != "manifest.jsonl"} == {
        k: v for k, v in before.items() if k != "manifest.jsonl"
    }


def test_other_settings_in_same_dir_are_refused(corpus):
    out, _ = corpus
    with pytest.raises(InvalidRequest, match="other settings"):
        build_corpus(out, num_clips=3, seed=1, clip_seconds=SECONDS, config=_cfg("TimGM6mb"))


def test_bad_arguments(tmp_path):
    with pytest.raises(InvalidRequest, match="with_vocals"):
        build_corpus(tmp_path, num_clips=1, with_vocals=True)
    with pytest.raises(InvalidRequest, match="num_clips"):
        build_corpus(tmp_path, num_clips=2, hours=1.0)
    with pytest.raises(InvalidRequest, match="hours"):
        build_corpus(tmp_path, hours=-1.0)


def test_cli_builds_the_default_corpus_and_resumes(all_tools, tmp_path, capsys):
    """`encore data build` end to end with the default recipe (its two soundfonts): two 2-s clips, then four."""
    from encore.data.render import available_soundfonts
    from encore.frontends import cli

    if not {"FluidR3_GM", "MuseScore_General_Lite"} <= set(available_soundfonts()):
        pytest.skip("the default corpus soundfonts are not installed (run scripts/setup-data.sh)")
    out = tmp_path / "corpus"
    argv = ["data", "build", str(out), "--seed", "2", "--clip-seconds", "2", "--json", "--quiet"]
    assert cli.main([*argv, "--clips", "2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (first["clips"], first["rendered"], first["skipped"]) == (2, 2, 0)
    assert cli.main([*argv, "--clips", "4"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert (second["clips"], second["rendered"], second["skipped"]) == (4, 2, 2)
    labels = read_manifest(out)
    assert [lab.index for lab in labels] == [0, 1, 2, 3]
    for lab in labels:
        info = sf.info(str(clip_dir(out, lab.index) / "mix.flac"))
        assert (info.samplerate, info.channels, info.frames) == (48_000, 2, 96_000)


def _midi_facts(path):
    mid = mido.MidiFile(str(path))
    metas = {m.type: m for m in mid.tracks[0] if m.is_meta}
    notes = [(m.channel, m.note) for t in mid.tracks for m in t if m.type == "note_on"]
    return metas, notes


def test_clip_files_labels_and_stems(corpus):
    out, _ = corpus
    for lab in read_manifest(out):
        d = clip_dir(out, lab.index)
        mix, sr = sf.read(d / lab.mix, dtype="float32", always_2d=True)
        assert sr == 48_000 and mix.shape == (int(SECONDS * 48_000), 2)
        assert np.abs(mix).max() <= 0.951 and np.sqrt((mix**2).mean()) > 0.01
        stems = [sf.read(d / rel, dtype="float32")[0] for rel in lab.stems.values()]
        # 16-bit rounding of each file is the only difference between the stems' sum and the mix
        np.testing.assert_allclose(np.sum(stems, axis=0), mix, atol=(len(stems) + 1) / 32768)
        assert set(lab.stems) == {i.stem for i in lab.instruments}
        assert 60 <= lab.bpm <= 180 and lab.timesignature in ("2", "3", "4", "6")
        assert lab.time_signature.split("/")[0] == lab.timesignature
        _, mode = parse_keyscale(lab.keyscale)
        metas, _ = _midi_facts(d / lab.midi)
        assert mido.tempo2bpm(metas["set_tempo"].tempo) == pytest.approx(lab.bpm, rel=1e-5)
        assert metas["time_signature"].numerator == int(lab.timesignature)
        assert metas["key_signature"].key.endswith("m") == (mode == "minor")
        assert lab.genre.lower() in lab.caption.lower() and len(lab.captions) == 3
        assert lab.lyrics == "[Instrumental]" and lab.language == "unknown"


def test_iter_clips_yields_stereo_tensors(corpus):
    out, _ = corpus
    items = list(iter_clips(out))
    assert [lab.index for _, lab in items] == [0, 1, 2]
    for wav, _ in items:
        assert tuple(wav.shape) == (2, int(SECONDS * 48_000)) and str(wav.dtype) == "torch.float32"


def _scale(tonic: int, mode: str) -> set[int]:
    pcs = {(tonic + s) % 12 for s in SCALES[mode]}
    return pcs | {(tonic + 11) % 12} if mode == "minor" else pcs


@pytest.mark.parametrize("source", ["procedural", "mma", "folk", "chorale"])
def test_symbolic_content_matches_key_labels(all_tools, source, tmp_path):
    cfg = _cfg(all_tools, clip_seconds=SECONDS, source_weights=((source, 1.0),))
    for index in range(2):
        clip = generate_clip(3, index, cfg, tmp_path)
        lab, score = clip.labels, clip.plan.score
        tonic, mode = parse_keyscale(lab.keyscale)
        assert (score.tonic, score.mode) == (tonic, mode) and lab.source == source
        pitched = [p for p in score.parts if not p.is_drum]
        if source == "procedural":  # built in key: every pitched note is diatonic (minor: + raised 7th)
            assert all(n.pitch % 12 in _scale(tonic, mode) for p in pitched for n in p.notes)
        elif source == "mma":  # our lead line over MMA's band is diatonic too
            lead = [n.pitch % 12 for p in pitched if p.role == "lead" for n in p.notes]
            assert set(lead) <= _scale(tonic, mode)
        else:  # transposed from the source key by exactly `transpose` semitones
            src_tonic, src_mode = lab.extra["source_key"]
            assert (src_tonic + lab.extra["transpose"]) % 12 == tonic and src_mode == mode
        assert np.abs(sum(clip.stems.values()) - clip.mix).max() < 1e-5


def _audio_onsets(x: np.ndarray, sr: int) -> np.ndarray:
    """Seconds where the 2.5-ms energy of the differenced signal (transients) jumps 3x over the last 10 ms."""
    hop = sr // 400
    dx = np.diff(x, axis=0, prepend=0.0)
    frames = (dx[: len(dx) // hop * hop] ** 2).sum(axis=1).reshape(-1, hop).sum(axis=1)
    frames = np.r_[np.zeros(4), frames]
    floor = frames.max() * 1e-3
    hits = [
        t - 4 for t in range(4, len(frames)) if frames[t] > floor and frames[t] > 3 * frames[t - 4 : t].mean()
    ]
    kept = [t for k, t in enumerate(hits) if k == 0 or t - hits[k - 1] > 4]
    return np.array(kept) * hop / sr


def test_drum_audio_follows_the_labelled_tempo(corpus):
    """Drum hits in the rendered stem sit where clip.mid (written at the labelled BPM) puts them."""
    out, _ = corpus
    checked = 0
    for lab in read_manifest(out):
        if "drums" not in lab.stems:
            continue
        d = clip_dir(out, lab.index)
        wav, sr = sf.read(d / lab.stems["drums"], dtype="float32", always_2d=True)
        now, expected = 0.0, []
        for msg in mido.MidiFile(str(d / lab.midi)):
            now += msg.time
            if msg.type == "note_on" and msg.velocity > 0 and msg.channel == 9 and msg.note < 54:
                expected.append(now)
        expected = np.array(sorted(set(np.round(expected, 4))))
        isolated = [
            t
            for k, t in enumerate(expected)
            if t < SECONDS - 0.1
            and (k == 0 or t - expected[k - 1] > 0.06)
            and (k == len(expected) - 1 or expected[k + 1] - t > 0.06)
        ]
        found = _audio_onsets(wav, sr)
        hit = [np.abs(found - t).min() < 0.012 for t in isolated]
        assert len(hit) >= 4 and np.mean(hit) >= 0.7, (lab.index, lab.bpm, np.mean(hit))
        checked += 1
    assert checked >= 2
