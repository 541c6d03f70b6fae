"""Packaged symbolic sources: ABC folk tunes (abc2midi), polyphony from the music21 corpus, MMA band grooves.

Each loader returns a tempo-free `Score` with exact key and metre, or raises `SourceUnusable` for items that
cannot be labelled reliably (odd metres, unclear tonic, parse failures); the corpus planner then draws
another.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from encore.data.arrange import Chord
from encore.data.score import Note, Part, Score, read_midi, split_drums

log = logging.getLogger(__name__)


class SourceUnusable(ValueError):
    """A source item cannot be turned into an exactly labelled score (the planner skips it)."""


def require_program(name: str) -> str:
    """Path of an external program, or `SourceUnusable` naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        raise SourceUnusable(f"program {name!r} not found (run scripts/setup-data.sh)")
    return path


@functools.cache
def music21_corpus_dir() -> Path:
    """Root of music21's bundled corpus."""
    import music21

    return Path(music21.__file__).parent / "corpus"


# ----------------------------------------------------------------------------------------------- ABC folk

FOLK_COLLECTIONS: dict[str, str] = {
    "essenFolksong": "",  # region comes from each tune's O: field
    "oneills1850": "Irish",
    "ryansMammoth": "American",
    "airdsAirs": "Scottish",
    "miscFolk": "British",
}
"""ABC collections in the music21 corpus → default region word."""
FOLK_WEIGHTS: dict[str, float] = {
    "essenFolksong": 0.4, "oneills1850": 0.25, "ryansMammoth": 0.15, "airdsAirs": 0.15, "miscFolk": 0.05,
}  # fmt: skip
"""How often each collection is drawn (Essen alone holds two thirds of the tunes)."""

_ESSEN_GENRES = (
    ("wiegen", "lullaby"), ("kinder", "children's song"), ("liebe", "love song"), ("tanz", "dance song"),
    ("trink", "drinking song"), ("hochzeit", "wedding song"), ("abschied", "farewell song"),
    ("soldat", "soldiers' song"), ("kriegs", "soldiers' song"), ("geistlich", "hymn"), ("religi", "hymn"),
    ("scherz", "humorous song"), ("ballade", "ballad"), ("romanze", "ballad"), ("xiaodiao", "xiaodiao"),
    ("shange", "shan'ge mountain song"), ("jaeger", "hunting song"), ("berufs", "work song"),
)  # fmt: skip
_ESSEN_REGIONS = (
    ("china", "Chinese"), ("luxemburg", "Luxembourgish"), ("lothringen", "Lorraine"),
    ("oesterreich", "Austrian"),
    ("schweiz", "Swiss"), ("niederlande", "Dutch"), ("ungarn", "Hungarian"), ("irland", "Irish"),
    ("jugoslawien", "Slovenian"), ("polen", "Polish"), ("udssr", "Russian"), ("tschechoslowakei", "Czech"),
    ("daenemark", "Danish"), ("frankreich", "French"), ("deutschland", "German"), ("mitteleuropa", "German"),
)  # fmt: skip
_FIDDLE_GENRES = ("reel", "jig", "hornpipe", "slip jig", "strathspey", "polka", "waltz", "march", "air",
                  "set dance", "slide", "schottische", "mazurka", "highland fling", "barndance")  # fmt: skip


@dataclass(frozen=True)
class AbcTune:
    """One ABC tune from the music21 corpus. `file` is relative to the corpus root."""

    collection: str
    file: str
    number: int
    text: str
    title: str
    genre: str
    region: str
    meter: tuple[int, int]
    key: str


def _field(text: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*?)\s*$", text, re.MULTILINE)
    return m.group(1).strip("] ") if m else ""


def parse_meter(value: str) -> tuple[int, int] | None:
    """ABC ``M:`` field → (num, den) when the numerator is one the official metas support (2, 3, 4, 6)."""
    value = value.replace(" ", "")
    meter = {"C": (4, 4), "C|": (2, 2)}.get(value)
    if meter is None:
        m = re.fullmatch(r"(\d+)/(\d+)", value)
        meter = (int(m.group(1)), int(m.group(2))) if m else None
    if meter is None or meter[0] not in (2, 3, 4, 6) or meter[1] not in (2, 4, 8):
        return None
    return meter


def _folk_genre(collection: str, rhythm: str) -> str:
    low = rhythm.lower().replace("-", " ").replace("  ", " ")
    if collection == "essenFolksong":
        compact = low.replace(" ", "")
        return next((g for k, g in _ESSEN_GENRES if k in compact), "folk song")
    low = low.replace("double jig", "jig").replace("slipjig", "slip jig")
    return next(
        (g for g in _FIDDLE_GENRES if g in low), "fiddle tune" if collection != "airdsAirs" else "air"
    )


def _essen_region(origin: str) -> str:
    low = origin.lower().replace(" ", "")
    return next((r for k, r in _ESSEN_REGIONS if k in low), "European")


@functools.cache
def abc_tunes(collections: tuple[str, ...] = tuple(FOLK_COLLECTIONS)) -> tuple[AbcTune, ...]:
    """All tunes with a supported metre in the given collections, in a fixed (sorted) order."""
    root = music21_corpus_dir()
    out = []
    for coll in collections:
        for path in sorted((root / coll).glob("*.abc")):
            text = path.read_text(encoding="latin-1")
            for num, chunk in enumerate(re.split(r"(?m)^(?=X:)", text)):
                if not chunk.startswith("X:"):
                    continue
                meter = parse_meter(_field(chunk, "M"))
                key = _field(chunk, "K")
                if meter is None or not key:
                    continue
                region = FOLK_COLLECTIONS.get(coll) or _essen_region(_field(chunk, "O"))
                out.append(AbcTune(coll, str(path.relative_to(root)), num, chunk, _field(chunk, "T"),
                                   _folk_genre(coll, _field(chunk, "R")), region, meter, key))  # fmt: skip
    return tuple(out)


_MODE_OFFSET = {"": 0, "maj": 0, "ion": 0, "m": 9, "min": 9, "aeo": 9, "dor": 2, "mix": 7, "lyd": 5, "phr": 4,
                "loc": 11}  # fmt: skip
_LETTER = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def signature_major(key_field: str) -> int:
    """Pitch class of the major key with the key signature of an ABC ``K:`` value (``"Ador"`` → G = 7)."""
    m = re.match(r"\s*([A-Ga-g])([#b]?)\s*([A-Za-z]*)", key_field)
    if not m:
        raise SourceUnusable(f"unsupported K: field {key_field!r}")
    pc = _LETTER[m.group(1).upper()] + {"#": 1, "b": -1, "": 0}[m.group(2)]
    mode = m.group(3).lower()[:3]
    if mode not in _MODE_OFFSET:
        raise SourceUnusable(f"unsupported mode in K: field {key_field!r}")
    return (pc - _MODE_OFFSET[mode]) % 12


def melody_key(notes: list[Note], sig_major: int | None) -> tuple[int, str]:
    """Tonic = final note; mode from the duration-weighted minor vs major third above it.

    With a key signature (`sig_major`), the final note must be its Ionian, Aeolian, Dorian or Mixolydian
    tonic, otherwise the tune (which then likely ends off the tonic) is unusable.
    """
    if not notes:
        raise SourceUnusable("no notes")
    last = max(notes, key=lambda n: (n.start, -n.pitch))
    tonic = last.pitch % 12
    if sig_major is not None and (tonic - sig_major) % 12 not in (0, 9, 2, 7):
        raise SourceUnusable("final note is not a plausible tonic of the key signature")
    minor = sum(n.dur for n in notes if (n.pitch - tonic) % 12 == 3)
    major = sum(n.dur for n in notes if (n.pitch - tonic) % 12 == 4)
    if minor == major and sig_major is not None:
        return tonic, "minor" if (tonic - sig_major) % 12 in (9, 2) else "major"
    return tonic, "minor" if minor > major else "major"


def folk_score(tune: AbcTune) -> Score:
    """Render `tune` to MIDI with abc2midi and read back its melody (the busiest pitched line)."""
    exe = require_program("abc2midi")
    with tempfile.TemporaryDirectory(prefix="encore-abc-") as tmp:
        src, dst = Path(tmp) / "tune.abc", Path(tmp) / "tune.mid"
        src.write_text(tune.text, encoding="latin-1")
        proc = subprocess.run([exe, str(src), "-o", str(dst), "-silent", "-quiet", "-NGUI", "-NFER"],
                              capture_output=True, timeout=30, check=False)  # fmt: skip
        if proc.returncode != 0 or not dst.is_file():
            raise SourceUnusable(f"abc2midi failed on {tune.file}#{tune.number}")
        content = read_midi(dst)
    pitched = [p for p in content.parts if not p.is_drum]
    if not pitched:
        raise SourceUnusable(f"no pitched notes in {tune.file}#{tune.number}")
    melody = max(pitched, key=lambda p: len(p.notes))
    if len(melody.notes) < 8:
        raise SourceUnusable("tune too short")
    tonic, mode = melody_key(melody.notes, signature_major(tune.key))
    meta = {"collection": tune.collection, "title": tune.title, "genre": tune.genre, "region": tune.region,
            "era": "traditional", "work": f"{tune.file}#{tune.number}"}  # fmt: skip
    part = Part("melody", melody.notes, program=73)
    return Score([part], tune.meter, tonic, mode, content.length, meta)


# ------------------------------------------------------------------------------------- music21 polyphony

POLYPHONY_WEIGHTS: dict[str, float] = {"bach": 0.5, "palestrina": 0.35, "monteverdi": 0.15}
"""How often each collection is drawn (Palestrina alone holds three quarters of the works)."""
POLYPHONY: dict[str, dict[str, str]] = {
    "bach": {"era": "baroque", "genre": "chorale", "composer": "J.S. Bach", "glob": "*.mxl"},
    "palestrina": {"era": "renaissance", "genre": "mass", "composer": "Palestrina", "glob": "*.krn"},
    "monteverdi": {"era": "renaissance", "genre": "madrigal", "composer": "Monteverdi", "glob": "*.mxl"},
}
"""music21 collections of 3-6 voice polyphony used by the "chorale" source."""


@functools.cache
def polyphony_works(collections: tuple[str, ...] = tuple(POLYPHONY)) -> tuple[str, ...]:
    """Corpus-relative paths of the works, sorted."""
    root = music21_corpus_dir()
    out = []
    for coll in collections:
        out += [str(p.relative_to(root)) for p in sorted((root / coll).glob(POLYPHONY[coll]["glob"]))]
    return tuple(out)


def _parse_polyphony(path: Path) -> dict:
    """music21 parse → plain dict (cached as JSON). Parses the source text, never music21's pickles."""
    from music21 import chord, converter, note

    try:
        score = converter.parse(str(path), forceSource=True)
    except Exception as e:  # music21 raises many unrelated types on malformed scores
        raise SourceUnusable(f"music21 cannot parse {path.name}: {type(e).__name__}") from e
    parts = []
    for part in score.parts:
        notes: list[list[float]] = []
        tied: dict[int, list[float]] = {}  # MIDI pitch → open tied note (merged by hand: stripTies is slow)
        for el in part.flatten().notes:
            if el.duration.quarterLength <= 0:
                continue
            pitches = (
                [el.pitch]
                if isinstance(el, note.Note)
                else list(el.pitches)
                if isinstance(el, chord.Chord)
                else []
            )
            tie = el.tie.type if el.tie is not None else None
            for p in pitches:
                start, dur, midi = float(el.offset), float(el.duration.quarterLength), int(p.midi)
                if tie in ("stop", "continue") and midi in tied:
                    tied[midi][1] = start + dur - tied[midi][0]
                else:
                    notes.append([start, dur, midi])
                    tied[midi] = notes[-1]
                if tie not in ("start", "continue"):
                    tied.pop(midi, None)
        if notes:
            parts.append({"name": part.partName or "", "notes": sorted(notes)})
    ts = score.recurse().getElementsByClass("TimeSignature").first()
    meter = [ts.numerator, ts.denominator] if ts is not None else None
    return {"parts": parts, "meter": meter, "length": float(score.highestTime)}


def polyphony_score(rel_path: str, cache_dir: Path | None = None) -> Score:
    """A multi-voice work (3-6 voices), with tonic = final bass note and mode from third counts."""
    cache = cache_dir / (re.sub(r"[^\w.-]", "_", rel_path) + ".json") if cache_dir else None
    if cache is not None and cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
    else:
        data = _parse_polyphony(music21_corpus_dir() / rel_path)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data), encoding="utf-8")
            tmp.replace(cache)
    meter = tuple(data["meter"]) if data["meter"] else None
    if meter is None or meter[0] not in (2, 3, 4, 6) or meter[1] not in (2, 4, 8):
        raise SourceUnusable(f"unsupported metre {meter} in {rel_path}")
    if not 3 <= len(data["parts"]) <= 6:
        raise SourceUnusable(f"{len(data['parts'])} voices in {rel_path}")
    parts = [
        Part(p["name"] or f"voice{i}", [Note(s, d, int(m), 84) for s, d, m in p["notes"]])
        for i, p in enumerate(data["parts"])
    ]
    allnotes = [n for p in parts for n in p.notes]
    end = max(n.start for n in allnotes)
    # tonic = lowest note of the final sonority (Picardy thirds and open fifths do not matter)
    tonic = min(n.pitch for n in allnotes if n.start + n.dur >= end + 1e-6) % 12
    minor = sum(n.dur for n in allnotes if (n.pitch - tonic) % 12 == 3)
    major = sum(n.dur for n in allnotes if (n.pitch - tonic) % 12 == 4)
    info = POLYPHONY[rel_path.split("/")[0]]
    meta = {"collection": rel_path.split("/")[0], "genre": info["genre"], "era": info["era"],
            "composer": info["composer"], "work": rel_path}  # fmt: skip
    return Score(parts, meter, tonic, "minor" if minor > major else "major", float(data["length"]), meta)


# --------------------------------------------------------------------------------------------------- MMA


@dataclass(frozen=True)
class Groove:
    """An MMA standard-library groove with the labels it implies."""

    name: str
    genre: str
    meter: int
    bpm: tuple[int, int]
    harmony: str = "pop"  # which progression family suits it: pop, jazz, blues
    era: str = ""


# fmt: off
GROOVES: tuple[Groove, ...] = (
    Groove("50sRock", "rock and roll", 4, (140, 180), "blues", "1950s"),
    Groove("60sRock", "rock", 4, (110, 150), "pop", "1960s"),
    Groove("8Beat", "pop rock", 4, (90, 140)),
    Groove("BasicRock", "rock", 4, (100, 150)),
    Groove("SoftRock", "soft rock", 4, (80, 120), "pop", "1970s"),
    Groove("FolkRock", "folk rock", 4, (90, 140), "pop", "1960s"),
    Groove("RockBallad", "rock ballad", 4, (60, 90)),
    Groove("PopBallad", "pop ballad", 4, (60, 90)),
    Groove("Ballad", "ballad", 4, (60, 84)),
    Groove("Swing", "swing", 4, (110, 180), "jazz", "1940s"),
    Groove("JazzCombo", "jazz", 4, (100, 170), "jazz"),
    Groove("EasySwing", "easy swing", 4, (90, 130), "jazz"),
    Groove("SlowJazz", "slow jazz", 4, (60, 90), "jazz"),
    Groove("MellowJazz", "smooth jazz", 4, (70, 110), "jazz"),
    Groove("JazzWaltz", "jazz waltz", 3, (100, 170), "jazz"),
    Groove("Blues", "blues", 4, (80, 130), "blues"),
    Groove("SlowBlues", "slow blues", 4, (60, 80), "blues"),
    Groove("ShuffleBoggie", "boogie shuffle", 4, (110, 160), "blues"),
    Groove("CountrySwing", "country swing", 4, (110, 170), "pop"),
    Groove("CountryWaltz", "country waltz", 3, (90, 150)),
    Groove("BlueGrass", "bluegrass", 4, (120, 180)),
    Groove("WesternSwing", "western swing", 4, (120, 180), "jazz", "1940s"),
    Groove("BossaNova", "bossa nova", 4, (110, 150), "jazz", "1960s"),
    Groove("Samba", "samba", 4, (90, 130)),
    Groove("Salsa", "salsa", 4, (150, 180)),
    Groove("Mambo", "mambo", 4, (160, 180), "pop", "1950s"),
    Groove("ChaCha", "cha-cha", 4, (110, 130)),
    Groove("Rhumba", "rumba", 4, (90, 130)),
    Groove("Merengue", "merengue", 4, (130, 175)),
    Groove("Beguine", "beguine", 4, (100, 130)),
    Groove("Bolero", "bolero", 4, (80, 110)),
    Groove("Tango", "tango", 4, (110, 130)),
    Groove("Calypso", "calypso", 4, (100, 140)),
    Groove("Ska", "ska", 4, (130, 170)),
    Groove("R&B", "rhythm and blues", 4, (80, 120), "blues"),
    Groove("DSoul", "soul", 4, (80, 120), "pop", "1970s"),
    Groove("Strut", "funk", 4, (90, 120)),
    Groove("Trance", "trance", 4, (125, 145)),
    Groove("Twist", "twist", 4, (140, 170), "blues", "1960s"),
    Groove("Jive", "jive", 4, (140, 176), "blues"),
    Groove("Charleston", "charleston", 4, (140, 180), "jazz", "1920s"),
    Groove("QuickStep", "quickstep", 4, (150, 180), "jazz"),
    Groove("Foxtrot", "foxtrot", 4, (100, 130), "jazz", "1930s"),
    Groove("Waltz", "waltz", 3, (80, 140)),
    Groove("VieneseWaltz", "viennese waltz", 3, (150, 180), "pop", "19th century"),
    Groove("FrenchWaltz", "musette waltz", 3, (120, 170)),
    Groove("Polka", "polka", 4, (100, 140)),
    Groove("Folk", "folk", 4, (90, 140)),
    Groove("FolkBallad", "folk ballad", 4, (60, 100)),
    Groove("Spiritual", "gospel", 4, (70, 110)),
    Groove("Hymn", "hymn", 4, (60, 90)),
    Groove("Zydeco", "zydeco", 4, (120, 170)),
    Groove("RagTime", "ragtime", 4, (90, 130), "pop", "1900s"),
    Groove("Dixie", "dixieland", 4, (150, 180), "jazz", "1920s"),
    Groove("BigBand", "big band", 4, (120, 180), "jazz", "1940s"),
    Groove("Lullaby", "lullaby", 4, (60, 80)),
    Groove("ShowTune", "show tune", 4, (100, 140)),
    Groove("JazzRock", "jazz rock", 4, (100, 140), "jazz", "1970s"),
    Groove("GypsyJazz", "gypsy jazz", 4, (140, 180), "jazz"),
)
# fmt: on


def mma_parts(groove: Groove, chords: list[Chord], seed: int) -> list[Part]:
    """Run MMA for `chords` (one line per bar) with `groove`; MMA's own randomness is seeded by `seed`.

    Returns:
        Parts read from MMA's MIDI: drum tracks merged and split into drums/percussion, pitched tracks
        with the same program merged.
    """
    exe = require_program("mma")
    bar_beats = float(groove.meter)
    bars: dict[int, list[Chord]] = {}
    for c in chords:
        bars.setdefault(int(c.start // bar_beats + 1e-9), []).append(c)
    lines = [f"RndSeed {seed % 2**31}", f"Groove {groove.name}", "Tempo 120"]
    lines += [f"{i + 1} " + " ".join(c.name for c in bars[i]) for i in sorted(bars)]
    with tempfile.TemporaryDirectory(prefix="encore-mma-") as tmp:
        src, dst = Path(tmp) / "song.mma", Path(tmp) / "song.mid"
        src.write_text("\n".join(lines) + "\n", encoding="utf-8")
        proc = subprocess.run(
            [exe, "-f", str(dst), str(src)], capture_output=True, timeout=60, check=False, cwd=tmp
        )
        if proc.returncode != 0 or not dst.is_file():
            raise SourceUnusable(f"mma failed for groove {groove.name}: {proc.stdout[-300:]!r}")
        content = read_midi(dst)
    # The metre label comes from `GROOVES` (MMA's `Time`), not the MIDI meta: some library files declare a
    # wrong `Timesig` (VieneseWaltz writes 4/4 for 3-beat bars). A slow test checks every groove's bar length.
    drums = [n for p in content.parts if p.is_drum for n in p.notes]
    kit = next((p.program for p in content.parts if p.is_drum), 0)
    by_program: dict[int, Part] = {}
    for p in content.parts:
        if not p.is_drum:
            merged = by_program.setdefault(p.program, Part(p.role, [], p.program, volume=p.volume))
            merged.notes.extend(p.notes)
    out = (
        split_drums(Part("drums", sorted(drums, key=lambda n: (n.start, n.pitch)), kit, True))
        if drums
        else []
    )
    for p in by_program.values():
        p.notes.sort(key=lambda n: (n.start, n.pitch))
        out.append(p)
    return out


def groove_dict(groove: Groove) -> dict:
    """Plain dict of a groove (for labels)."""
    return asdict(groove)
