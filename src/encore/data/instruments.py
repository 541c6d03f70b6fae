"""General MIDI instruments and the one mapping from instruments/caption words to track classes.

Track classes are the official stem names (`encore.tasks.spec.TRACK_NAMES`). Training labels, captions and the
evaluation's instrument probe all read this module, so a name means the same class everywhere.
"""

from __future__ import annotations

import re

from encore.tasks.beat_hints import INSTRUMENT_HINT_TRACKS
from encore.tasks.spec import TRACK_NAMES

INSTRUMENT_CLASSES: tuple[str, ...] = TRACK_NAMES
"""Class vocabulary for instrument labels and probes: the official track names."""

# fmt: off
GM_NAMES: tuple[str, ...] = (
    # 0-7 piano
    "grand piano", "bright piano", "electric grand piano", "honky-tonk piano",
    "electric piano", "electric piano", "harpsichord", "clavinet",
    # 8-15 chromatic percussion
    "celesta", "glockenspiel", "music box", "vibraphone", "marimba", "xylophone", "tubular bells", "dulcimer",
    # 16-23 organ
    "organ", "organ", "rock organ", "church organ", "reed organ", "accordion", "harmonica", "bandoneon",
    # 24-31 guitar
    "nylon guitar", "acoustic guitar", "jazz guitar", "clean electric guitar",
    "muted guitar", "overdriven guitar", "distorted guitar", "guitar harmonics",
    # 32-39 bass
    "acoustic bass", "electric bass", "electric bass", "fretless bass",
    "slap bass", "slap bass", "synth bass", "synth bass",
    # 40-47 strings
    "violin", "viola", "cello", "double bass", "tremolo strings", "pizzicato strings", "harp", "timpani",
    # 48-55 ensemble
    "string ensemble", "string ensemble", "synth strings", "synth strings",
    "choir", "voice oohs", "synth voice", "orchestra hit",
    # 56-63 brass
    "trumpet", "trombone", "tuba", "muted trumpet", "french horn", "brass section",
    "synth brass", "synth brass",
    # 64-71 reed
    "soprano sax", "alto sax", "tenor sax", "baritone sax", "oboe", "english horn", "bassoon", "clarinet",
    # 72-79 pipe
    "piccolo", "flute", "recorder", "pan flute", "blown bottle", "shakuhachi", "tin whistle", "ocarina",
    # 80-87 synth lead
    "square lead", "saw lead", "calliope lead", "chiff lead", "charang lead", "voice lead", "fifths lead",
    "bass and lead",
    # 88-95 synth pad
    "new age pad", "warm pad", "polysynth", "choir pad", "bowed pad", "metallic pad", "halo pad", "sweep pad",
    # 96-103 synth effects
    "rain fx", "soundtrack fx", "crystal fx", "atmosphere fx", "brightness fx", "goblins fx", "echoes fx",
    "sci-fi fx",
    # 104-111 ethnic
    "sitar", "banjo", "shamisen", "koto", "kalimba", "bagpipe", "fiddle", "shanai",
    # 112-119 percussive
    "tinkle bell", "agogo", "steel drums", "woodblock", "taiko drum", "melodic tom", "synth drum",
    "reverse cymbal",
    # 120-127 sound effects
    "guitar fret noise", "breath noise", "seashore", "bird tweet", "telephone ring", "helicopter", "applause",
    "gunshot",
)
"""Caption-friendly name of each General MIDI program (index = program number 0-127)."""
# fmt: on

_CLASS_RANGES: tuple[tuple[int, int, str], ...] = (
    (0, 8, "keyboard"),
    (8, 16, "percussion"),
    (16, 22, "keyboard"),
    (22, 23, "woodwinds"),  # harmonica: a free reed blown like a woodwind
    (23, 24, "keyboard"),
    (24, 32, "guitar"),
    (32, 40, "bass"),
    (40, 47, "strings"),
    (47, 48, "percussion"),  # timpani
    (48, 50, "strings"),
    (50, 52, "synth"),
    (52, 54, "backing_vocals"),  # wordless choir samples
    (54, 55, "synth"),
    (55, 56, "fx"),
    (56, 62, "brass"),
    (62, 64, "synth"),
    (64, 80, "woodwinds"),
    (80, 96, "synth"),
    (96, 104, "fx"),
    (104, 108, "guitar"),  # sitar, banjo, shamisen, koto: plucked strings
    (108, 109, "percussion"),  # kalimba
    (109, 110, "woodwinds"),  # bagpipe
    (110, 111, "strings"),  # fiddle
    (111, 112, "woodwinds"),  # shanai
    (112, 119, "percussion"),
    (119, 128, "fx"),
)

_PROGRAM_CLASS: tuple[str, ...] = tuple(
    next(cls for lo, hi, cls in _CLASS_RANGES if lo <= p < hi) for p in range(128)
)

DRUM_KITS: dict[int, str] = {
    0: "standard kit",
    8: "room kit",
    16: "power kit",
    24: "electronic kit",
    25: "808 kit",
    32: "jazz kit",
    40: "brush kit",
}
"""GM2 drum-kit presets (bank 128) present in the Debian GM soundfonts, by preset number."""

# Kit pieces played by a drummer (kick, snares, toms, hi-hats, cymbals, claps, sticks); every other
# GM percussion key (tambourine, cowbell, congas, shakers, ...) belongs to the percussion class.
_DRUM_KIT_KEYS = frozenset([*range(35, 54), 55, 57, 59])


def program_class(program: int) -> str:
    """Track class (one of `TRACK_NAMES`) of a melodic General MIDI program 0-127."""
    if not 0 <= program < 128:
        raise ValueError(f"General MIDI program must be 0-127, got {program}")
    return _PROGRAM_CLASS[program]


def program_name(program: int) -> str:
    """Caption name of a melodic General MIDI program 0-127."""
    if not 0 <= program < 128:
        raise ValueError(f"General MIDI program must be 0-127, got {program}")
    return GM_NAMES[program]


def drum_key_class(key: int) -> str:
    """``"drums"`` for drum-kit pieces, ``"percussion"`` for hand/latin percussion keys (GM drum channel)."""
    return "drums" if key in _DRUM_KIT_KEYS else "percussion"


# Extra caption words (beyond GM_NAMES) that name a class; longest phrases are matched first.
_EXTRA_WORDS: dict[str, str] = {
    "drums": "drums",
    "drum kit": "drums",
    "drum machine": "drums",
    "beat": "drums",
    "808": "drums",
    "kick": "drums",
    "snare": "drums",
    "hi-hat": "drums",
    "hihat": "drums",
    "cymbals": "drums",
    "percussion": "percussion",
    "congas": "percussion",
    "conga": "percussion",
    "bongos": "percussion",
    "shaker": "percussion",
    "maracas": "percussion",
    "tambourine": "percussion",
    "cowbell": "percussion",
    "claves": "percussion",
    "timbales": "percussion",
    "triangle": "percussion",
    "mallets": "percussion",
    "bass": "bass",
    "bassline": "bass",
    "sub bass": "bass",
    "guitar": "guitar",
    "guitars": "guitar",
    "mandolin": "guitar",
    "ukulele": "guitar",
    "piano": "keyboard",
    "keys": "keyboard",
    "keyboard": "keyboard",
    "keyboards": "keyboard",
    "rhodes": "keyboard",
    "organ": "keyboard",
    "strings": "strings",
    "string quartet": "strings",
    "violins": "strings",
    "orchestra": "strings",
    "brass": "brass",
    "horns": "brass",
    "trumpets": "brass",
    "trombones": "brass",
    "horn section": "brass",
    "woodwinds": "woodwinds",
    "winds": "woodwinds",
    "sax": "woodwinds",
    "saxophone": "woodwinds",
    "flutes": "woodwinds",
    "whistle": "woodwinds",
    "reeds": "woodwinds",
    "synth": "synth",
    "synths": "synth",
    "synthesizer": "synth",
    "pad": "synth",
    "pads": "synth",
    "arpeggiator": "synth",
    "lead synth": "synth",
    "fx": "fx",
    "sound effects": "fx",
    "riser": "fx",
    "vocals": "vocals",
    "vocal": "vocals",
    "singer": "vocals",
    "singing": "vocals",
    "sung": "vocals",
    "backing vocals": "backing_vocals",
    "choir": "backing_vocals",
    "harmonies": "backing_vocals",
}

CAPTION_WORDS: dict[str, str] = {
    **{name: _PROGRAM_CLASS[p] for p, name in enumerate(GM_NAMES)},
    **{kit: "drums" for kit in DRUM_KITS.values()},
    **_EXTRA_WORDS,
}
"""Every caption word/phrase this project uses for an instrument → its track class."""

STYLE_PHRASES: frozenset[str] = frozenset({"drum and bass", "fiddle tune", "fiddle tunes"})
"""Genre names that contain an instrument word but name no instrument ("a fiddle tune played on guitar" has no
fiddle); matched like `CAPTION_WORDS`, so the longer phrase wins, and then dropped."""

_WORD_RE = re.compile(
    r"(?<![\w-])("
    + "|".join(re.escape(w) for w in sorted({*CAPTION_WORDS, *STYLE_PHRASES}, key=len, reverse=True))
    + r")(?![\w-])"
)


def classes_in_text(text: str) -> set[str]:
    """Track classes named in a caption (longest phrase wins: "synth bass" → bass, not synth + bass).

    Args:
        text: Free caption text, any case.

    Returns:
        The set of class names (subset of `TRACK_NAMES`) mentioned.
    """
    return {CAPTION_WORDS[w] for m in _WORD_RE.finditer(text.lower()) if (w := m.group(1)) not in STYLE_PHRASES}


def hint_tracks(caption: str) -> tuple[str, ...]:
    """The track classes an instrument hint carries for a caption (`encore.tasks.beat_hints`): those it names,
    in `INSTRUMENT_HINT_TRACKS` order, lead vocals left to the lyrics. Training and the pipeline both call
    this, so a model reads at inference the hint it learnt from."""
    named = classes_in_text(caption)
    return tuple(t for t in INSTRUMENT_HINT_TRACKS if t in named)
