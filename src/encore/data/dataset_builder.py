"""`encore dataset build DIR`: scan a folder of songs into a reviewable JSON manifest (FEATURES A7).

Finds wav/flac/mp3/ogg files in nested folders, reads sidecars (`x.caption.txt`, `x.lyrics.txt`, `x.txt` =
lyrics) and an optional CSV, labels what is missing (tempo and key by signal analysis, caption/lyrics/metas by
an optional planner "listener"), records a confidence and source per field, and applies an activation tag.
Every bad file is skipped with a reason; nothing aborts the scan. `preprocess.py` turns the manifest into latents.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from encore.audio.io import load_audio, probe_audio
from encore.data.analysis import ANALYSIS_RATE, estimate_key, estimate_tempo
from encore.errors import AudioError, InvalidRequest
from encore.tasks.prompts import VALID_LANGUAGES

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "encore-dataset"
MANIFEST_VERSION = 1
DEFAULT_MANIFEST_NAME = "encore_dataset.json"
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
OTHER_AUDIO_SUFFIXES = (".m4a", ".aac", ".wma", ".aif", ".aiff", ".opus", ".ape", ".alac", ".mp4", ".webm", ".mka")
"""Audio formats we recognise but cannot decode: reported as skipped (convert them first)."""
# soundfile's format names for each accepted suffix.
_CONTAINER = {".wav": {"WAV", "WAVEX", "RF64", "W64"}, ".flac": {"FLAC"}, ".mp3": {"MP3"}, ".ogg": {"OGG"}}
CAPTION_SUFFIX, LYRICS_SUFFIX, TEXT_SUFFIX = ".caption.txt", ".lyrics.txt", ".txt"
INSTRUMENTAL = "[Instrumental]"
LABEL_FIELDS = ("caption", "lyrics", "bpm", "keyscale", "timesignature", "language")
TagPosition = Literal["prepend", "append", "replace"]
LOW_CONFIDENCE = 0.5
"""Labels below this confidence are flagged in the summary for review."""


@dataclass(frozen=True)
class Label:
    """One field of a sample with its provenance."""

    value: Any
    confidence: float
    """0..1; 1 for values a person wrote (sidecar, CSV), lower for automatic ones, 0 when unknown."""
    source: str
    """`sidecar`, `csv`, `signal`, `planner`, `default` or `missing`."""


@dataclass
class Sample:
    """A usable song in the manifest."""

    id: str
    """Stable identifier derived from the relative path (also the key in latent shards)."""
    path: str
    """Path relative to the dataset root, `/`-separated."""
    duration_s: float
    sample_rate: int
    channels: int
    labels: dict[str, Label]

    def value(self, name: str) -> Any:
        return self.labels[name].value if name in self.labels else None


@dataclass(frozen=True)
class Skipped:
    """A file that was not used, and why."""

    path: str
    reason: str


@dataclass
class Manifest:
    """The reviewable dataset description written as JSON (edit captions/labels by hand, then train)."""

    root: str
    """Dataset folder; relative paths are relative to the manifest file's folder."""
    samples: list[Sample]
    skipped: list[Skipped] = field(default_factory=list)
    activation_tag: str | None = None
    tag_position: TagPosition = "prepend"
    ignored: int = 0
    """Non-audio files seen (images, text, ...)."""
    warnings: list[str] = field(default_factory=list)
    latents: str | None = None
    """Latent folder written by preprocessing (relative to the manifest), or None."""

    def caption_for(self, sample: Sample) -> str:
        """The training caption: the sample's caption with the activation tag applied."""
        caption = str(sample.value("caption") or "")
        tag = self.activation_tag
        if not tag:
            return caption
        if self.tag_position == "replace" or not caption:
            return tag
        return f"{tag}, {caption}" if self.tag_position == "prepend" else f"{caption}, {tag}"

    def root_path(self, manifest_path: str | Path) -> Path:
        root = Path(self.root)
        return root if root.is_absolute() else (Path(manifest_path).parent / root)

    # --- JSON ---
    def to_dict(self) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "root": self.root,
                "activation_tag": self.activation_tag, "tag_position": self.tag_position, "latents": self.latents,
                "samples": [asdict(s) for s in self.samples], "skipped": [asdict(s) for s in self.skipped],
                "ignored": self.ignored, "warnings": self.warnings}

    def save(self, path: str | Path) -> Path:
        """Writes the manifest atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Reads a manifest (possibly hand-edited).

        Raises:
            InvalidRequest: (field `dataset`) unreadable file, wrong format, or malformed entries.
        """
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InvalidRequest("dataset", f"cannot read manifest {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise InvalidRequest("dataset", f"{path} is not an {MANIFEST_FORMAT} manifest")
        if data.get("version") != MANIFEST_VERSION:
            raise InvalidRequest("dataset", f"{path}: unsupported manifest version {data.get('version')}")
        try:
            samples = [Sample(**{**s, "labels": {k: Label(**v) for k, v in s["labels"].items()}})
                       for s in data["samples"]]
            skipped = [Skipped(**s) for s in data.get("skipped", [])]
        except (KeyError, TypeError) as exc:
            raise InvalidRequest("dataset", f"{path}: malformed sample entry ({exc})") from exc
        if data.get("tag_position", "prepend") not in ("prepend", "append", "replace"):
            raise InvalidRequest("dataset", f"{path}: tag_position must be prepend, append or replace")
        return cls(root=data["root"], samples=samples, skipped=skipped, activation_tag=data.get("activation_tag"),
                   tag_position=data.get("tag_position", "prepend"), ignored=int(data.get("ignored", 0)),
                   warnings=list(data.get("warnings", [])), latents=data.get("latents"))


Listener = Callable[[Path], Mapping[str, Label]]
"""Optional labeller (e.g. the planner's listener mode): audio path -> labels for any of `LABEL_FIELDS`."""


@dataclass(frozen=True, kw_only=True)
class BuildOptions:
    """How `build_dataset` scans and labels."""

    csv_path: str | Path | None = None
    """CSV with a `file` (or `filename`/`path`) column and any of caption, lyrics, bpm, key/keyscale,
    timesignature, language."""
    activation_tag: str | None = None
    tag_position: TagPosition = "prepend"
    max_seconds: float = 600.0
    """Longer files are skipped (the model's limit is 600 s)."""
    min_seconds: float = 1.0
    analyze: bool = True
    """Estimate tempo and key from the signal when no person-written value exists."""
    listener: Listener | None = None

    def __post_init__(self) -> None:
        if self.tag_position not in ("prepend", "append", "replace"):
            raise InvalidRequest("tag_position", f"must be prepend, append or replace, got {self.tag_position!r}")
        if not 0 < self.min_seconds < self.max_seconds:
            raise InvalidRequest("max_seconds", f"need 0 < min_seconds < max_seconds, got {self.min_seconds}, "
                                 f"{self.max_seconds}")


# --------------------------------------------------------------------------------------------- scanning


def _is_sidecar(name: str) -> bool:
    return name.lower().endswith(TEXT_SUFFIX)


def scan(root: Path) -> tuple[list[Path], list[Skipped], int]:
    """Walks `root` (sorted, not following directory symlinks).

    Returns:
        `(candidate audio files, files skipped at this stage, number of other files ignored)`.
    """
    candidates: list[Path] = []
    skipped: list[Skipped] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for d in dirnames:
            if Path(d).suffix.lower() in AUDIO_SUFFIXES:
                skipped.append(Skipped(_rel(Path(dirpath) / d, root), "a directory named like an audio file"))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            suffix = path.suffix.lower()
            if name.startswith(".") or _is_sidecar(name) or suffix == ".csv" or name.endswith(".json"):
                continue
            if suffix in AUDIO_SUFFIXES:
                candidates.append(path)
            elif suffix in OTHER_AUDIO_SUFFIXES:
                skipped.append(Skipped(_rel(path, root), f"unsupported format {suffix} (convert to "
                                       f"{'/'.join(s[1:] for s in AUDIO_SUFFIXES)})"))
            else:
                ignored += 1
    return candidates, skipped, ignored


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def check_file(path: Path, max_seconds: float, min_seconds: float) -> tuple[Any, str | None]:
    """Cheap checks before decoding: file type, size, permissions, header, extension, duration.

    Returns:
        `(AudioInfo, None)` when usable, else `(None, reason)`.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None, "broken symlink" if os.path.islink(path) else "file disappeared during the scan"
    except PermissionError:
        return None, "permission denied"
    if not stat.S_ISREG(st.st_mode):
        kind = "FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode) else "special file"
        return None, f"not a regular file ({kind})"
    if st.st_size == 0:
        return None, "empty file (0 bytes)"
    if not os.access(path, os.R_OK):
        return None, "permission denied"
    try:
        info = probe_audio(path)
    except AudioError as exc:
        return None, f"not a decodable audio file: {_short(exc)}"
    except OSError as exc:
        return None, f"cannot read the file ({exc.strerror or exc})"
    suffix = path.suffix.lower()
    if info.format not in _CONTAINER[suffix]:
        return None, f"wrong extension: {suffix} but the content is {info.format} (rename the file)"
    if info.num_samples <= 0 or info.sample_rate <= 0:
        return None, "empty audio (0 samples)"
    if info.duration_s > max_seconds:
        return None, f"too long: {info.duration_s:.0f} s (limit {max_seconds:g} s; split it or raise --max-seconds)"
    if info.duration_s < min_seconds:
        return None, f"too short: {info.duration_s:.2f} s (minimum {min_seconds:g} s)"
    return info, None


def _short(exc: Exception) -> str:
    """The reason inside an error message, without the file path (the summary already names the file)."""
    text = str(exc)
    if isinstance(exc, AudioError) and text.startswith(exc.path + ": "):
        text = text[len(exc.path) + 2:]
    text = re.sub(r"Error opening '.*?': ", "", text)
    text = re.sub(r"^not a readable audio file \((.*)\)$", r"\1", text)
    return " ".join(text.split())[:160]


# --------------------------------------------------------------------------------------------- labels


def _read_text(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read sidecar %s: %s", path, exc)
        return None


def sidecar_labels(audio: Path) -> dict[str, Label]:
    """Caption from `<stem>.caption.txt`; lyrics from `<stem>.lyrics.txt`, else `<stem>.txt` (official)."""
    out: dict[str, Label] = {}
    stem = audio.with_suffix("")
    caption = _read_text(Path(f"{stem}{CAPTION_SUFFIX}"))
    if caption:
        out["caption"] = Label(caption, 1.0, "sidecar")
    for suffix in (LYRICS_SUFFIX, TEXT_SUFFIX):
        lyrics = _read_text(Path(f"{stem}{suffix}"))
        if lyrics:
            out["lyrics"] = Label(lyrics, 1.0, "sidecar")
            break
    return out


_CSV_COLUMNS = {
    "file": "file", "filename": "file", "path": "file", "audio": "file", "caption": "caption", "prompt": "caption",
    "lyrics": "lyrics", "bpm": "bpm", "tempo": "bpm", "key": "keyscale", "keyscale": "keyscale",
    "timesignature": "timesignature", "time_signature": "timesignature", "language": "language",
}


def read_csv_labels(csv_path: Path, warnings: list[str]) -> dict[str, dict[str, str]]:
    """Rows of the metadata CSV keyed by their `file` value (as written), values stripped; empty cells dropped."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidRequest("csv", f"cannot read {csv_path}: {exc}") from exc
    out: dict[str, dict[str, str]] = {}
    for i, row in enumerate(rows, start=2):
        fields = {_CSV_COLUMNS[k.strip().lower()]: (v or "").strip() for k, v in row.items()
                  if k and k.strip().lower() in _CSV_COLUMNS}
        name = fields.pop("file", "")
        if not name:
            warnings.append(f"{csv_path.name} line {i}: no file column value; row ignored")
            continue
        out[name] = {k: v for k, v in fields.items() if v}
    return out


def _csv_row(rows: Mapping[str, dict[str, str]], rel: str) -> dict[str, str] | None:
    name = Path(rel).name
    return rows.get(rel) or rows.get(name) or rows.get(Path(rel).stem)


def parse_csv_row(row: Mapping[str, str], where: str, warnings: list[str]) -> dict[str, Label]:
    """Typed labels from one CSV row (bad values are reported and dropped)."""
    out: dict[str, Label] = {}
    for key, text in row.items():
        value: Any = text
        if key == "bpm":
            try:
                value = round(float(text))
            except ValueError:
                warnings.append(f"{where}: bpm {text!r} is not a number; ignored")
                continue
            if not 30 <= value <= 300:
                warnings.append(f"{where}: bpm {value} outside 30-300; ignored")
                continue
        elif key == "timesignature":
            value = text.split("/")[0].strip()
            if value not in ("2", "3", "4", "6"):
                warnings.append(f"{where}: time signature {text!r} not one of 2, 3, 4, 6; ignored")
                continue
            value = int(value)
        elif key == "language" and text not in VALID_LANGUAGES:
            warnings.append(f"{where}: language {text!r} is not a known code; ignored")
            continue
        out[key] = Label(value, 1.0, "csv")
    return out


def signal_labels(path: Path, max_seconds: float, *, analyze: bool = True) -> dict[str, Label]:
    """Decodes the whole file (mono, 22.05 kHz) and estimates tempo and key (when `analyze`).

    Raises:
        AudioError: the file does not decode to the end, holds NaN/Inf, or is silent.
    """
    wav, rate = load_audio(path, target_rate=ANALYSIS_RATE, channels=1, max_seconds=max_seconds)
    mono = wav[0].numpy()
    if float(np.abs(mono).max()) < 1e-4:
        raise AudioError(str(path), "silent (peak below -80 dBFS)")
    out: dict[str, Label] = {}
    if not analyze:
        return out
    tempo = estimate_tempo(mono, rate)
    if tempo.value is not None:
        out["bpm"] = Label(round(float(tempo.value)), tempo.confidence, "signal")
    key = estimate_key(mono, rate)
    if key.value is not None:
        out["keyscale"] = Label(key.value, key.confidence, "signal")
    return out


def _merge(*layers: Mapping[str, Label]) -> dict[str, Label]:
    """Earlier layers win; a later one only fills fields the earlier ones lack."""
    out: dict[str, Label] = {}
    for layer in layers:
        for k, v in layer.items():
            out.setdefault(k, v)
    return out


def _defaults(labels: dict[str, Label]) -> dict[str, Label]:
    out = dict(labels)
    out.setdefault("caption", Label("", 0.0, "missing"))
    out.setdefault("lyrics", Label(INSTRUMENTAL, 0.3, "default"))
    out.setdefault("language", Label("unknown", 0.0, "default"))
    for name in ("bpm", "keyscale", "timesignature"):
        out.setdefault(name, Label(None, 0.0, "missing"))
    return {k: out[k] for k in LABEL_FIELDS}


def _unique_id(rel: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", str(Path(rel).with_suffix(""))).strip("_") or "sample"
    sid, n = base, 2
    while sid in used:
        sid, n = f"{base}_{n}", n + 1
    used.add(sid)
    return sid


# --------------------------------------------------------------------------------------------- build


def _label_file(path: Path, rel: str, options: BuildOptions, csv_rows: Mapping[str, dict[str, str]],
                warnings: list[str]) -> dict[str, Label]:
    """All labels of one usable file; raises AudioError if the full decode fails."""
    row = _csv_row(csv_rows, rel)
    person = _merge(parse_csv_row(row, rel, warnings) if row else {}, sidecar_labels(path))
    signal = signal_labels(path, options.max_seconds, analyze=options.analyze)  # proves the file decodes
    heard: Mapping[str, Label] = {}
    if options.listener is not None and any(f not in person for f in LABEL_FIELDS):
        heard = {k: v for k, v in options.listener(path).items() if k in LABEL_FIELDS}
    merged = _merge(person, _combine(signal, heard), heard)
    return _defaults(merged)


def _combine(signal: Mapping[str, Label], heard: Mapping[str, Label]) -> dict[str, Label]:
    """bpm/key from the signal and the listener: agreement raises confidence; otherwise the surer one wins."""
    out: dict[str, Label] = {}
    for name in ("bpm", "keyscale"):
        a, b = signal.get(name), heard.get(name)
        if a is None or b is None:
            if a is not None or b is not None:
                out[name] = a if a is not None else b  # type: ignore[assignment]
            continue
        agree = (abs(float(a.value) - float(b.value)) <= 0.04 * float(a.value) if name == "bpm"
                 else str(a.value).lower() == str(b.value).lower())
        if agree:
            out[name] = Label(a.value, round(min(1.0, max(a.confidence, b.confidence) + 0.2), 3), "signal+planner")
        else:
            out[name] = a if a.confidence >= b.confidence else b
    return out


def build_dataset(root: str | Path, options: BuildOptions | None = None,
                  progress: Callable[[int, int, str], None] | None = None) -> Manifest:
    """Scans `root` and labels every usable file; bad files end up in `Manifest.skipped` with a reason.

    Args:
        root: Dataset folder.
        options: Scan/label options.
        progress: Called as `(index, total, relative path)` before each file.

    Raises:
        InvalidRequest: `root` is not a folder, or the CSV cannot be read.
    """
    options = options or BuildOptions()
    root = Path(root)
    if not root.is_dir():
        raise InvalidRequest("dir", f"{root} is not a folder")
    warnings: list[str] = []
    csv_rows = read_csv_labels(Path(options.csv_path), warnings) if options.csv_path else {}
    candidates, skipped, ignored = scan(root)
    samples: list[Sample] = []
    used: set[str] = set()
    for i, path in enumerate(candidates):
        rel = _rel(path, root)
        if progress is not None:
            progress(i, len(candidates), rel)
        info, reason = check_file(path, options.max_seconds, options.min_seconds)
        if reason is None:
            try:
                labels = _label_file(path, rel, options, csv_rows, warnings)
            except AudioError as exc:
                reason = f"decoding failed: {_short(exc)}"
            except OSError as exc:
                reason = f"cannot read the file ({exc.strerror or exc})"
        if reason is not None:
            skipped.append(Skipped(rel, reason))
            continue
        samples.append(Sample(id=_unique_id(rel, used), path=rel, duration_s=round(info.duration_s, 3),
                              sample_rate=info.sample_rate, channels=info.channels, labels=labels))
    matched = {s.path for s in samples} | {Path(s.path).name for s in samples} | {Path(s.path).stem for s in samples}
    warnings += [f"CSV row {name!r} matches no usable audio file" for name in csv_rows if name not in matched]
    skipped.sort(key=lambda s: s.path)
    return Manifest(root=str(root), samples=samples, skipped=skipped, activation_tag=options.activation_tag,
                    tag_position=options.tag_position, ignored=ignored, warnings=warnings)


def summarize(manifest: Manifest, manifest_path: str | Path | None = None) -> str:
    """Human-readable build summary: counts, every skipped file with its reason, label coverage."""
    total_s = sum(s.duration_s for s in manifest.samples)
    lines = [(f"{len(manifest.samples)} usable audio file(s), {total_s / 60:.1f} min; {len(manifest.skipped)} "
              f"skipped; {manifest.ignored} other file(s) ignored.")]
    if manifest.skipped:
        lines.append("Skipped:")
        lines += [f"  {s.path}: {s.reason}" for s in manifest.skipped]
    if manifest.samples:
        lines.append(f"Labels (have / low confidence < {LOW_CONFIDENCE:.1f}):")
        for name in LABEL_FIELDS:
            have = [s.labels[name] for s in manifest.samples if s.labels[name].source not in ("missing",)]
            low = sum(1 for lab in have if lab.confidence < LOW_CONFIDENCE)
            lines.append(f"  {name:<13} {len(have)}/{len(manifest.samples)}  low: {low}")
    lines += [f"Warning: {w}" for w in manifest.warnings]
    if manifest.activation_tag:
        lines.append(f"Activation tag {manifest.activation_tag!r} ({manifest.tag_position}).")
    if manifest_path is not None:
        lines.append(f"Manifest: {manifest_path} (review and edit labels before training)")
    return "\n".join(lines)


def iter_training_items(manifest: Manifest, manifest_path: str | Path) -> Iterable[tuple[Sample, Path, str]]:
    """`(sample, absolute audio path, training caption)` for every sample."""
    root = manifest.root_path(manifest_path)
    for sample in manifest.samples:
        yield sample, root / sample.path, manifest.caption_for(sample)
