"""Key names in ACE-Step's spelling (``"F# minor"``, ``"Bb major"``) and their pitch classes. Shared by the corpus
labels, the evaluation and the key hints, so it sits below all of them."""

from __future__ import annotations

MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
MODES = ("major", "minor")

_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def keyscale(tonic: int, mode: str) -> str:
    """Official key string for tonic pitch class 0-11 and mode ("major"/"minor"), e.g. ``"F# minor"``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    names = MAJOR_NAMES if mode == "major" else MINOR_NAMES
    return f"{names[tonic % 12]} {mode}"


def parse_keyscale(text: str) -> tuple[int, str]:
    """Inverse of `keyscale`; accepts any enharmonic spelling (``"Gb major"``, ``"A♯ minor"``).

    Returns:
        (tonic pitch class 0-11, mode).
    """
    parts = text.replace("♯", "#").replace("♭", "b").split()
    if len(parts) != 2 or parts[1].lower() not in MODES or not parts[0] or parts[0][0].upper() not in _PC:
        raise ValueError(f"not a key like 'C# minor': {text!r}")
    name, mode = parts[0], parts[1].lower()
    pc = _PC[name[0].upper()] + name[1:].count("#") - name[1:].count("b")
    return pc % 12, mode
