"""DiT-side text prompts: task instructions, the caption prompt and the lyric prompt (SPEC §5, §10).

Strings are byte-exact with the official `constants.py` / handler formatting; tests pin them against
literal strings. The planner (LM) prompts live with the planner, not here.
"""

from __future__ import annotations

from encore.errors import InvalidRequest
from encore.tasks.spec import Complete, Cover, Extend, Extract, Lego, Repaint, TaskSpec, Text2Music

SFT_GEN_PROMPT = "# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{metas}<|endoftext|>\n"
"""Caption-branch template (official `SFT_GEN_PROMPT`, note the trailing newline)."""

LYRIC_PROMPT = "# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"
"""Lyric-branch template (official `_format_lyrics`, no trailing newline)."""

TEXT2MUSIC_INSTRUCTION = "Fill the audio semantic mask based on the given conditions:"
REPAINT_INSTRUCTION = "Repaint the mask area based on the given conditions:"
COVER_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
EXTRACT_INSTRUCTION = "Extract the {TRACK_NAME} track from the audio:"
EXTRACT_DEFAULT_INSTRUCTION = "Extract the track from the audio:"
LEGO_INSTRUCTION = "Generate the {TRACK_NAME} track based on the audio context:"
LEGO_DEFAULT_INSTRUCTION = "Generate the track based on the audio context:"
COMPLETE_INSTRUCTION = "Complete the input track with {TRACK_CLASSES}:"
COMPLETE_DEFAULT_INSTRUCTION = "Complete the input track:"

# fmt: off
VALID_LANGUAGES: tuple[str, ...] = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr",
    "ht", "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro",
    "ru", "sa", "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)
# fmt: on
"""Vocal-language codes accepted by the lyric branch (official `VALID_LANGUAGES`)."""

NOT_AVAILABLE = "N/A"
DEFAULT_DURATION_S = 30
"""Duration written into the metas when none is known (official default)."""


def format_instruction(instruction: str) -> str:
    """Force the trailing ':' the official handler adds (`_format_instruction`)."""
    return instruction if instruction.endswith(":") else instruction + ":"


def instruction_for(spec: TaskSpec, *, has_audio_codes: bool = False) -> str:
    """The instruction line for a task (SPEC §10 table).

    Args:
        spec: The task.
        has_audio_codes: Text2music driven by planner/user audio codes switches to the cover instruction,
            as the official handler does.

    Returns:
        The instruction, ending with ':'.
    """
    if isinstance(spec, Text2Music):
        return COVER_INSTRUCTION if has_audio_codes else TEXT2MUSIC_INSTRUCTION
    if isinstance(spec, Cover):
        return COVER_INSTRUCTION
    if isinstance(spec, (Repaint, Extend)):
        return REPAINT_INSTRUCTION
    if isinstance(spec, Extract):
        if spec.track is None:
            return EXTRACT_DEFAULT_INSTRUCTION
        return EXTRACT_INSTRUCTION.format(TRACK_NAME=spec.track.upper())
    if isinstance(spec, Lego):
        if spec.track is None:
            return LEGO_DEFAULT_INSTRUCTION
        return LEGO_INSTRUCTION.format(TRACK_NAME=spec.track.upper())
    if isinstance(spec, Complete):
        if not spec.tracks:
            return COMPLETE_DEFAULT_INSTRUCTION
        return COMPLETE_INSTRUCTION.format(TRACK_CLASSES=" | ".join(t.upper() for t in spec.tracks))
    raise InvalidRequest("task", f"unknown task type {type(spec).__name__}")


def format_metas(
    *,
    bpm: int | None = None,
    timesignature: int | str | None = None,
    keyscale: str | None = None,
    duration_s: float | None = None,
) -> str:
    """The four-line metas block (official `_build_metadata_dict` + `_dict_to_meta_string`, SPEC §5.1).

    Missing values become ``N/A``; a blank key scale or a time signature of ``"N/A"`` also counts as
    missing. Duration is written as ``int(duration)`` seconds (truncated), 30 when unknown.

    Returns:
        ``"- bpm: …\\n- timesignature: …\\n- keyscale: …\\n- duration: … seconds\\n"``.
    """
    bpm_text = str(bpm) if bpm else NOT_AVAILABLE
    ts_text = str(timesignature) if timesignature is not None else ""
    if not ts_text.strip() or ts_text == NOT_AVAILABLE:
        ts_text = NOT_AVAILABLE
    ks_text = keyscale if keyscale is not None and keyscale.strip() else NOT_AVAILABLE
    duration = DEFAULT_DURATION_S if duration_s is None else int(duration_s)
    return (
        f"- bpm: {bpm_text}\n"
        f"- timesignature: {ts_text}\n"
        f"- keyscale: {ks_text}\n"
        f"- duration: {duration} seconds\n"
    )


def format_caption_prompt(instruction: str, caption: str, metas: str) -> str:
    """The caption-branch text fed to the Qwen3 text encoder (SPEC §5.1).

    Args:
        instruction: Task instruction (a trailing ':' is added if missing).
        caption: User or planner caption, verbatim.
        metas: Output of `format_metas`.
    """
    return SFT_GEN_PROMPT.format(instruction=format_instruction(instruction), caption=caption, metas=metas)


def validate_language(language: str) -> str:
    """Return `language` if it is a `VALID_LANGUAGES` code, else raise `InvalidRequest` (``text.language``)."""
    if language not in VALID_LANGUAGES:
        raise InvalidRequest(
            "text.language", f"unknown language {language!r}; use an ISO code such as 'en' or 'unknown'"
        )
    return language


def format_lyric_prompt(language: str, lyrics: str) -> str:
    """The lyric-branch text (SPEC §5.2): ``# Languages\\n{language}\\n\\n# Lyric\\n{lyrics}<|endoftext|>``."""
    return LYRIC_PROMPT.format(language=validate_language(language), lyrics=lyrics)
