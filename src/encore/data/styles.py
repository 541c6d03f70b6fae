"""Procedural band: electronic and urban styles MMA lacks (house, trap, synthwave, ...), as symbolic parts.

Drum grooves are 16-step patterns per 4/4 bar; bass, comping, pads and leads come from `encore.data.arrange`.
The output is an ordinary `Score`, rendered with the same GM soundfonts as every other source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from encore.data.arrange import PROGRESSIONS, bass_line, comp_part, melody_line, progression_chords
from encore.data.score import Note, Part, Score, split_drums

# GM drum keys used in patterns.
KICK, RIM, SNARE, CLAP, CHAT, PHAT, OHAT, CRASH, RIDE = 36, 37, 38, 39, 42, 44, 46, 49, 51
TAMB, COWBELL, CONGA_HI, CONGA_LO, BONGO, SHAKER, CLAVES = 54, 56, 63, 64, 60, 70, 75
_VEL = {"x": 112, "o": 88, "-": 58, "r": 80}


@dataclass(frozen=True)
class BandStyle:
    """One procedural style. Patterns map a GM drum key to alternatives (16 chars: x accent, o hit, - ghost,
    r 32nd-note roll, . rest); program tuples are GM programs to draw from."""

    name: str
    genre: str
    bpm: tuple[int, int]
    kits: tuple[int, ...]
    drums: dict[int, tuple[str, ...]]
    bass: tuple[tuple[int, ...], tuple[str, ...]]
    comp: tuple[tuple[int, ...], tuple[str, ...]]
    lead: tuple[int, ...] = ()
    pad: tuple[int, ...] = ()
    harmony: tuple[str, ...] = ("major", "minor")
    swing: float = 0.5
    lead_grid: float = 0.5
    era: str = "contemporary"
    extra: dict[str, str] = field(default_factory=dict)


FOUR = "x...x...x...x..."
BACKBEAT = "....x.......x..."

# fmt: off
STYLES: tuple[BandStyle, ...] = (
    BandStyle("house", "house", (118, 128), (24, 25, 0),
              {KICK: (FOUR,), CLAP: (BACKBEAT,), OHAT: ("..o...o...o...o.",), CHAT: ("-o-o-o-o-o-o-o-o", ""),
               SHAKER: ("o-o-o-o-o-o-o-o-", "")},
              ((38, 39, 87), ("pulse8", "sync")), ((4, 18, 81, 89), ("stab", "offbeat", "block")),
              (81, 80, 84), (89, 90, 95)),
    BandStyle("techno", "techno", (124, 140), (24, 25),
              {KICK: (FOUR,), RIM: ("..o...o..o....o.", "......o.......o."),
               CHAT: ("xoxoxoxoxoxoxoxo", "..o...o...o...o."),
               CLAP: (BACKBEAT, "")},
              ((38, 39, 81), ("pulse8", "sync")), ((81, 90, 95), ("arp16", "stab", "block")),
              (81, 84, 80), (95, 90, 94), ("minor",)),
    BandStyle("hiphop", "hip hop", (80, 98), (0, 8, 25),
              {KICK: ("x......o..x.....", "x.....x...o....."), SNARE: (BACKBEAT,),
               CHAT: ("o.o.o.o.o.o.o.o.", "o-o-o-o-o-o-o-o-")},
              ((33, 38, 34), ("sync", "root")), ((4, 5, 0, 11), ("block", "stab")),
              (73, 11, 81), (), ("minor", "major"), 0.6, 0.25),
    BandStyle("trap", "trap", (130, 160), (25,),
              {KICK: ("x.....x...x.....", "x......x..x...o."), SNARE: ("........x.......",),
               CHAT: ("oooooooooorrooor", "o.o.o.o.oorro.o.", "xoxoxoxorrrroooo"),
               OHAT: ("", "..............o.")},
              ((38, 39), ("root", "sync")), ((0, 4, 88, 48), ("block", "arp8")),
              (81, 80, 73, 104), (89, 95), ("minor",), 0.5, 0.25),
    BandStyle("dnb", "drum and bass", (160, 180), (0, 24),
              {KICK: ("x.........x.....", "x.........x..o.."),
               SNARE: ("....x.......x...", "....x..o....x..o"),
               CHAT: ("o.o.o.o.o.o.o.o.", "o-o-o-o-o-o-o-o-"), RIDE: ("", "..o...o...o...o.")},
              ((38, 39, 35), ("root", "sync")), ((89, 88, 91, 4), ("block",)),
              (81, 80, 54), (95, 89), ("minor",)),
    BandStyle("synthwave", "synthwave", (80, 118), (24, 16),
              {KICK: ("x.......x.......", FOUR), SNARE: (BACKBEAT,),
               CHAT: ("o.o.o.o.o.o.o.o.", "oooooooooooooooo")},
              ((38, 39), ("pulse8", "octave8")), ((90, 89, 50, 62), ("block", "arp16", "arp8")),
              (81, 80, 84, 87), (89, 90, 91), ("minor", "major"), 0.5, 0.5, "1980s"),
    BandStyle("disco", "disco", (110, 128), (0, 16),
              {KICK: (FOUR,), SNARE: (BACKBEAT,), OHAT: ("..x...x...x...x.",), CHAT: ("o.o.o.o.o.o.o.o.", ""),
               TAMB: ("....o.......o...", "")},
              ((33, 36, 38), ("octave8",)), ((48, 49, 27, 4, 61), ("stab", "pulse", "offbeat")),
              (48, 56, 61, 81, 73), (48, 50), ("major", "minor"), 0.5, 0.5, "1970s"),
    BandStyle("lofi", "lo-fi hip hop", (70, 90), (40, 32, 0),
              {KICK: ("x......x..x.....", "x.....x.x......."), SNARE: (BACKBEAT,),
               CHAT: ("o.o.o.o.o.o.o.o.", "o-o-o-o-o-o-o-o-")},
              ((33, 32, 35), ("root", "sync")), ((4, 5, 0, 26), ("block", "stab")),
              (11, 73, 26, 65), (), ("major", "minor"), 0.62, 0.5, "contemporary", {"jazz": "1"}),
    BandStyle("ambient", "ambient", (60, 90), (),
              {},
              ((38, 89), ("root",)), ((88, 89, 91, 92, 94), ("block",)),
              (14, 8, 108, 11, 98), (95, 88, 92), ("major", "minor"), 0.5, 1.0),
    BandStyle("chiptune", "chiptune", (130, 170), (24,),
              {KICK: ("x.......x.x.....", FOUR), SNARE: (BACKBEAT,),
               CHAT: ("o.o.o.o.o.o.o.o.", "oooooooooooooooo")},
              ((80, 81), ("octave8", "pulse8")), ((80, 81), ("arp16",)),
              (80,), (), ("major", "minor"), 0.5, 0.25, "video game"),
    BandStyle("reggae", "reggae", (66, 90), (0, 8),
              {KICK: ("........x.......",), RIM: ("........x.......",),
               CHAT: ("o.o.o.o.o.o.o.o.", "o.-.o.-.o.-.o.-.")},
              ((33, 34), ("sync", "root")), ((16, 17, 27, 25), ("offbeat",)),
              (16, 56, 65, 73), (), ("major", "minor"), 0.55, 0.5, "1970s"),
    BandStyle("funk", "funk", (95, 115), (0, 8, 16),
              {KICK: ("x.....x...x..x..", "x..x......x....."), SNARE: ("....x..-.-..x..", BACKBEAT),
               CHAT: ("oooooooooooooooo", "xoxoxoxoxoxoxoxo"), CONGA_HI: ("", "..o...o.o...o...")},
              ((36, 37, 33), ("sync",)), ((7, 28, 27, 4), ("stab", "offbeat")),
              (61, 56, 65, 81), (), ("minor", "major"), 0.54, 0.25, "1970s"),
)
# fmt: on


def drum_part(style: BandStyle, bars: int, rng: np.random.Generator) -> list[Part]:
    """Drum/percussion parts for `bars` 4/4 bars (a crash on bar 1; swing shifts off-beat steps)."""
    if not style.drums:
        return []
    notes: list[Note] = [Note(0.0, 0.5, CRASH, 100)] if rng.random() < 0.5 else []
    for key, options in style.drums.items():
        pattern = options[int(rng.integers(len(options)))]
        for bar in range(bars):
            for step, ch in enumerate(pattern[:16]):
                if ch == "." or ch not in _VEL:
                    continue
                t = bar * 4 + _swung(step, style.swing)
                if ch == "r":
                    notes += [Note(t, 0.1, key, _VEL[ch]), Note(t + 0.125, 0.1, key, _VEL[ch] - 10)]
                else:
                    notes.append(Note(t, 0.2, key, _VEL[ch] + int(rng.integers(-6, 7))))
    kit = style.kits[int(rng.integers(len(style.kits)))]
    notes.sort(key=lambda n: (n.start, n.pitch))
    return split_drums(Part("drums", notes, kit, is_drum=True, volume=118))


def _swung(step: int, swing: float) -> float:
    """Beat position of 16th `step` with off-beat eighths delayed to `swing` of the beat (0.5 = straight)."""
    beat, sub = divmod(step, 4)
    if sub == 2:
        return beat + swing
    return beat + sub * 0.25


def band_score(style: BandStyle, tonic: int, mode: str, bars: int, rng: np.random.Generator) -> Score:
    """A full procedural arrangement: drums, bass, comping, optional pad and lead, in `tonic` `mode`."""
    family = "jazz_" + mode if style.extra.get("jazz") else mode
    numerals = PROGRESSIONS[family][int(rng.integers(len(PROGRESSIONS[family])))]
    chords = progression_chords(numerals, tonic, mode, 4.0, bars)
    parts = drum_part(style, bars, rng)
    bass_prog = int(rng.choice(style.bass[0]))
    parts.append(Part("bass", bass_line(chords, str(rng.choice(style.bass[1])), 4.0, rng), bass_prog))
    comp_prog = int(rng.choice(style.comp[0]))
    parts.append(Part("chords", comp_part(chords, str(rng.choice(style.comp[1])), 4.0), comp_prog, volume=90))
    if style.pad and rng.random() < 0.5:
        parts.append(
            Part("pad", comp_part(chords, "block", 4.0, center=58), int(rng.choice(style.pad)), volume=70)
        )
    if style.lead and rng.random() < 0.75:
        line = melody_line(
            chords, tonic, mode, 4.0, rng, grid=style.lead_grid, density=float(rng.uniform(0.3, 0.6))
        )
        parts.append(Part("lead", line, int(rng.choice(style.lead)), volume=96))
    meta = {"genre": style.genre, "style": style.name, "era": style.era, "progression": "-".join(numerals)}
    return Score(parts, (4, 4), tonic, mode, bars * 4.0, meta)
