"""Captions from clip labels: several templates, dense to sparse, word choice drawn from a seeded generator.

Every word that names a fact is derived from the labels (tempo words from BPM, mood words from the mode,
instrument names from the rendered programs), so a caption never claims something the audio lacks.
"""

from __future__ import annotations

import re

import numpy as np

from encore.data.labels import InstrumentLabel

_MOOD = {
    "major": ("bright", "cheerful", "uplifting", "warm", "happy", "sunny"),
    "minor": ("melancholic", "dark", "moody", "somber", "wistful", "brooding"),
}
_CLASS_WORD = {"drums": "drums", "percussion": "percussion", "backing_vocals": "choir"}


def tempo_words(bpm: float) -> tuple[str, ...]:
    """Words for a tempo (quarter-note BPM)."""
    if bpm < 76:
        return ("slow", "laid-back", "unhurried")
    if bpm < 100:
        return ("relaxed", "mid-tempo", "easygoing")
    if bpm < 126:
        return ("moderate", "steady", "groovy")
    if bpm < 150:
        return ("upbeat", "lively", "driving")
    return ("fast", "energetic", "brisk")


def retime_caption(caption: str, old_bpm: int, new_bpm: int) -> str:
    """`caption` with its tempo facts changed from `old_bpm` to `new_bpm`: the number before "BPM"/"bpm" and,
    when the tempo crosses into another `tempo_words` bin, the tempo word (same position in the new bin).

    Used by tempo augmentation, which re-times a clip and must keep its caption exact.
    """
    out = re.sub(rf"\b{int(old_bpm)}(?= bpm\b)", str(int(new_bpm)), caption, flags=re.IGNORECASE)
    old_words, new_words = tempo_words(old_bpm), tempo_words(new_bpm)
    if old_words != new_words:
        for old, new in zip(old_words, new_words, strict=True):
            out = re.sub(rf"(?<![\w-]){re.escape(old)}(?![\w-])", new, out)
            cap_old, cap_new = old[:1].upper() + old[1:], new[:1].upper() + new[1:]
            out = re.sub(rf"(?<![\w-]){re.escape(cap_old)}(?![\w-])", cap_new, out)
    return out


def instrument_words(instruments: list[InstrumentLabel]) -> list[str]:
    """Distinct caption names of the rendered parts, lead/melody first, drums and percussion last."""
    order = {"melody": 0, "lead": 0, "soprano": 1}
    names: list[str] = []
    for inst in sorted(instruments, key=lambda i: (i.is_drum, order.get(i.role, 2))):
        word = _CLASS_WORD.get(inst.stem, inst.instrument) if inst.is_drum else inst.instrument
        if word not in names:
            names.append(word)
    return names


def _join(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def _pick(rng: np.random.Generator, options: tuple[str, ...] | list[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def make_captions(
    *, genre: str, bpm: int, keyscale: str, time_signature: str, era: str, instruments: list[InstrumentLabel],
    rng: np.random.Generator, region: str = "", composer: str = "",
) -> list[str]:  # fmt: skip
    """Three captions for one clip: dense (all facts), medium (genre, instruments, one number), sparse.

    Args:
        genre: Genre/style phrase (e.g. "bossa nova", "irish reel" is built from region + genre).
        bpm: Quarter-note tempo.
        keyscale: e.g. "A minor".
        time_signature: e.g. "3/4".
        era: Era word ("baroque", "1970s", "traditional", "contemporary", ...).
        instruments: Rendered parts.
        rng: Randomness source (the clip's own stream).
        region: Folk region adjective (e.g. "Irish"), optional.
        composer: Composer for "in the style of", optional.
    """
    mode = keyscale.split()[-1]
    mood, tempo = _pick(rng, _MOOD[mode]), _pick(rng, tempo_words(bpm))
    names = instrument_words(instruments)
    insts = _join(names)
    full_genre = f"{region} {genre}".strip() if region else genre
    era_word = "" if era in ("", "contemporary") else era
    with_ = _pick(rng, ("with", "featuring", "played on", "for")) if names else ""
    if len(instruments) == 1 and not instruments[0].is_drum:
        insts = _pick(rng, (f"solo {names[0]}", names[0]))
    facts = [f"{keyscale}", f"{time_signature} time", f"{bpm} BPM"]
    rng.shuffle(facts)
    style_of = f" in the style of {composer}" if composer else ""
    dense_templates = (
        f"{tempo} {mood} {full_genre}{style_of} {with_} {insts}, {', '.join(facts)}",
        (
            f"{full_genre[:1].upper() + full_genre[1:]} piece {with_} {insts}{style_of}. "
            f"{tempo.capitalize()} and {mood}, {facts[0]}, {facts[1]}, {facts[2]}."
        ),
        f"A {mood}, {tempo} {era_word + ' ' if era_word else ''}{full_genre} track {with_} {insts}; "
        + ", ".join(facts),
        f"{insts}, {full_genre}, {mood}, {tempo}, {', '.join(facts)}" + (f", {era_word}" if era_word else ""),
    )
    dense = _pick(rng, dense_templates)
    number = _pick(rng, (f"{bpm} bpm", keyscale, f"in {keyscale}", f"{bpm} BPM"))
    medium = _pick(rng, (
        f"{full_genre} {with_} {insts}, {number}",
        f"{mood} {full_genre}, {insts}, {number}",
        f"{tempo} {full_genre} {with_} {insts}",
    ))  # fmt: skip
    lead = names[0] if names else ""
    sparse = _pick(rng, (full_genre, f"{mood} {genre}", f"{lead} {genre}".strip(), f"{genre}, {bpm} bpm",
                         f"{tempo} {genre}"))  # fmt: skip
    return [" ".join(c.split()) for c in (dense, medium, sparse)]
