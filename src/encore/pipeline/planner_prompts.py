"""Planner prompt strings, ChatML rendering and CoT YAML formatting/parsing (SPEC §12.2); pure functions.

`render_chat` reproduces what the Qwen3 chat template gives for the message shapes the planner uses
(system / user / optional assistant CoT), so prompts do not depend on the tokenizer shipping a template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Literal

import yaml

INSTRUCTION_GENERATE = "Generate audio semantic tokens based on the given conditions:"
INSTRUCTION_UNDERSTAND = "Understand the given musical conditions and describe the audio semantics accordingly:"
INSTRUCTION_INSPIRE = "Expand the user's input into a more detailed and specific musical description:"
INSTRUCTION_FORMAT = "Format the user's input into a more detailed and specific musical description:"
NO_USER_INPUT = "NO USER INPUT"
COT_KEYS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
"""Fields written into the phase-2 CoT (genres excluded)."""
INT_FIELDS = ("bpm", "duration", "timesignature")

Phase2Prompt = Literal["open", "legacy"]
"""Phase-2 prompt variant (SPEC §12.2): "open" = training-aligned, assistant turn left open after the CoT
(newer upstream default, acestep.cpp); "legacy" = Feb-snapshot, CoT as a closed assistant turn."""

Message = Mapping[str, str]


def render_chat(messages: Sequence[Message], *, add_generation_prompt: bool) -> str:
    """ChatML text of `messages` as the Qwen3 template renders it (no tools).

    An assistant message after the last user message that is the final message, or that carries
    `<think>…</think>`, is rendered `<think>\\n{reasoning}\\n</think>\\n\\n{content}`.
    """
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)
    out: list[str] = []
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role != "assistant":
            out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
            continue
        reasoning = ""
        if "</think>" in content:
            reasoning = content.split("</think>")[0].rstrip("\n").split("<think>")[-1].lstrip("\n")
            content = content.split("</think>")[-1].lstrip("\n")
        if i > last_user and (i == len(messages) - 1 or reasoning):
            out.append(f"<|im_start|>assistant\n<think>\n{reasoning.strip(chr(10))}\n</think>\n\n"
                       f"{content.lstrip(chr(10))}<|im_end|>\n")
        else:
            out.append(f"<|im_start|>assistant\n{content}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def _system(instruction: str) -> dict[str, str]:
    return {"role": "system", "content": f"# Instruction\n{instruction}\n\n"}


def _ask(instruction: str, user: str) -> str:
    return render_chat([_system(instruction), {"role": "user", "content": user}], add_generation_prompt=True)


def has_negative_prompt(negative_prompt: str | None) -> bool:
    """Whether a negative prompt means something (not empty, not the "NO USER INPUT" default)."""
    return bool(negative_prompt and negative_prompt.strip() and negative_prompt.strip() != NO_USER_INPUT)


def caption_lyrics(caption: str, lyrics: str) -> str:
    """User content of the generation prompt."""
    return f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n"


# --- generate (plan) ---
def cot_prompt(caption: str, lyrics: str) -> str:
    """Phase 1 (CoT) conditional prompt."""
    return _ask(INSTRUCTION_GENERATE, caption_lyrics(caption, lyrics))


def cot_uncond_prompt(lyrics: str, negative_prompt: str | None) -> str:
    """Phase 1 unconditional (CFG) prompt: negative prompt as caption, or lyrics only."""
    if has_negative_prompt(negative_prompt):
        return _ask(INSTRUCTION_GENERATE, caption_lyrics(str(negative_prompt), lyrics))
    return _ask(INSTRUCTION_GENERATE, f"# Lyric\n{lyrics}\n")


def codes_prompt(caption: str, lyrics: str, cot: str, style: Phase2Prompt = "open") -> str:
    """Phase 2 (codes) conditional prompt: the generation prompt continued by the CoT."""
    if style == "open":
        return cot_prompt(caption, lyrics) + cot + "\n\n"
    text = render_chat([_system(INSTRUCTION_GENERATE), {"role": "user", "content": caption_lyrics(caption, lyrics)},
                        {"role": "assistant", "content": cot}], add_generation_prompt=False)
    return text if text.endswith("\n") else text + "\n"


def codes_uncond_prompt(caption: str, lyrics: str, negative_prompt: str | None,
                        style: Phase2Prompt = "open") -> str:
    """Phase 2 unconditional (CFG) prompt with an empty CoT."""
    if style == "open":
        user = str(negative_prompt) if has_negative_prompt(negative_prompt) else NO_USER_INPUT
        return _ask(INSTRUCTION_GENERATE, user) + "<think>\n\n</think>\n\n"
    cap = str(negative_prompt) if has_negative_prompt(negative_prompt) else caption
    return codes_prompt(cap, lyrics, "<think>\n</think>", "legacy")


# --- understand / inspiration / format ---
def _uncond_user(negative_prompt: str | None) -> str:
    return negative_prompt if negative_prompt and negative_prompt.strip() else ""


def understand_prompt(codes_text: str) -> str:
    """Codes → metas + lyrics prompt; `codes_text` is the concatenated `<|audio_code_N|>` string."""
    return _ask(INSTRUCTION_UNDERSTAND, codes_text)


def understand_uncond_prompt(negative_prompt: str | None) -> str:
    return _ask(INSTRUCTION_UNDERSTAND, _uncond_user(negative_prompt))


def inspiration_prompt(query: str, instrumental: bool) -> str:
    """Simple mode: one sentence → caption, lyrics, metas."""
    return _ask(INSTRUCTION_INSPIRE, f"{query}\n\ninstrumental: {'true' if instrumental else 'false'}")


def inspiration_uncond_prompt(negative_prompt: str | None) -> str:
    return _ask(INSTRUCTION_INSPIRE, _uncond_user(negative_prompt))


def format_prompt(caption: str, lyrics: str) -> str:
    """Format / rewrite: raw caption and lyrics → standardised ones (no trailing newline after lyrics)."""
    return _ask(INSTRUCTION_FORMAT, f"# Caption\n{caption}\n\n# Lyric\n{lyrics}")


def format_uncond_prompt(negative_prompt: str | None) -> str:
    return _ask(INSTRUCTION_FORMAT, _uncond_user(negative_prompt))


# --- CoT YAML ---
def format_cot(values: Mapping[str, object]) -> str:
    """CoT block for phase 2: `<think>\\n{yaml}\\n</think>` over `COT_KEYS` present in `values`.

    Digit strings become ints and `"x/4"` time signatures become `x`, then PyYAML dumps with sorted keys
    (it wraps long captions at 80 columns and may quote scalars such as `'no'`), as the reference does.
    """
    items: dict[str, object] = {}
    for key in COT_KEYS:
        value = values.get(key)
        if value is None:
            continue
        if key == "timesignature" and isinstance(value, str) and value.endswith("/4"):
            value = value.split("/")[0]
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        items[key] = value
    body = yaml.dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""
    return f"<think>\n{body}\n</think>"


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_cot(text: str) -> dict[str, str | int]:
    """Fields of a CoT block body (the text between `<think>` and `</think>`).

    A line without leading whitespace that contains `:` starts a field; indented lines continue it
    (joined with single spaces). bpm / duration / timesignature become ints when numeric.
    """
    fields: dict[str, list[str]] = {}
    key: str | None = None
    for line in text.split("\n"):
        if line and not line[0].isspace() and ":" in line:
            name, first = line.split(":", 1)
            key = name.strip().lower()
            fields[key] = [first.strip()]
        elif line.strip() and key is not None and line[0].isspace():
            fields[key].append(line.strip())
    out: dict[str, str | int] = {}
    for name, parts in fields.items():
        value = _unquote(" ".join(p for p in parts if p))
        if not value:
            continue
        if name == "timesignature" and re.fullmatch(r"\d+/\d+", value):
            value = value.split("/")[0]
        out[name] = int(value) if name in INT_FIELDS and value.isdigit() else value
    return out


def extract_lyrics(text: str) -> str:
    """Lyrics from the text after `</think>`: header `# Lyric(s)` and a trailing `<|im_end|>` removed."""
    text = text.strip()
    text = re.sub(r"^#\s*Lyrics?\s*\n", "", text, flags=re.IGNORECASE)
    text = re.sub(r"<\|im_end\|>\s*$", "", text)
    return text.strip()
