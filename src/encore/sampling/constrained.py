"""Constrained decoding for planner output: an explicit, token-level state machine (SPEC §12.4).

`ConstraintTables` precomputes, once per tokenizer, the allowed-token sets of every state (prefix
trees for bpm / duration / key / language / time signature as `RowSet`s, boolean masks for free
text). A request compiles to a tuple of `Step`s; an `FsmState` walks them. Per decoding step the
loop asks `rows(state)` which LM-head rows it needs (None = all, enabling head slicing),
`constrain(state, logits, rows)` which of them are allowed, then `advance(state, token)`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from encore.models.planner import PlannerVocab, RowSet

BPM_MIN, BPM_MAX = 30, 300
DURATION_MIN, DURATION_MAX = 10, 600
TIME_SIGNATURES = (2, 3, 4, 6)
KEYSCALES = tuple(f"{n}{a} {m}" for n in "ABCDEFG" for a in ("", "#", "b", "♯", "♭") for m in ("major", "minor"))
LANGUAGES = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fr", "he", "hi", "hr", "ht",
    "hu", "id", "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no", "pa", "pl", "pt", "ro", "ru", "sa",
    "sk", "sr", "sv", "sw", "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh", "unknown",
)
FIELD_ORDER = ("bpm", "caption", "duration", "genres", "keyscale", "language", "timesignature")
"""CoT YAML field order (alphabetical, as `yaml.dump(sort_keys=True)` writes it)."""
Tail = Literal["stop", "lyrics", "codes"]


class Kind(enum.Enum):
    """What a step emits."""

    FORCED = "forced"      # fixed token sequence (field names, tags, injected user values)
    TRIE = "trie"          # one value of a closed set, token by token through a prefix tree
    LANGUAGE = "language"  # like TRIE, but the first token is the top-1 candidate (greedy)
    TEXT = "text"          # free text: caption (YAML multi-line) or genres (one line)
    CODES = "codes"        # audio codes, then EOS exactly at the target count
    LYRICS = "lyrics"      # free text after </think> until EOS (audio codes banned)
    EOS = "eos"            # EOS only (stop right after </think>)


@dataclass(frozen=True, eq=False)
class Trie:
    """Token prefix tree of a closed value set: prefix → allowed next tokens (newline when complete)."""

    allowed: dict[tuple[int, ...], RowSet]
    children: dict[tuple[int, ...], frozenset[int]]
    complete: frozenset[tuple[int, ...]]


@dataclass(frozen=True, eq=False)
class Step:
    """One state-machine step; see `Kind`."""

    kind: Kind
    field: str | None = None
    forced: tuple[int, ...] = ()
    trie: Trie | None = None
    multiline: bool = False
    max_tokens: int = 0
    target: int | None = None


@dataclass(frozen=True, kw_only=True)
class ConstraintSpec:
    """What one decoded sequence must look like.

    `fields` are the CoT fields to emit (subset of `FIELD_ORDER`, emitted in that order); empty with
    `cot=False` means the prompt already ends with `</think>` and only the tail is decoded.
    """

    cot: bool = True
    fields: tuple[str, ...] = ()
    user_values: Mapping[str, str] = field(default_factory=dict)
    """Field → value text injected verbatim as `" {value}\\n"` instead of being sampled."""
    tail: Tail = "stop"
    target_codes: int | None = None
    """Exact number of audio codes before EOS (None: EOS allowed at any point)."""
    max_duration: int = DURATION_MAX
    max_caption_tokens: int = 512
    max_genres_tokens: int = 64

    def __post_init__(self) -> None:
        unknown = [f for f in (*self.fields, *self.user_values) if f not in FIELD_ORDER]
        if unknown:
            raise ValueError(f"unknown CoT fields {unknown}")
        extra = [f for f in self.user_values if f not in self.fields]
        if extra:
            raise ValueError(f"user values for fields not emitted: {extra}")
        if self.target_codes is not None and self.target_codes < 0:
            raise ValueError(f"target_codes must be >= 0, got {self.target_codes}")
        if not DURATION_MIN <= self.max_duration <= DURATION_MAX:
            raise ValueError(f"max_duration {self.max_duration} outside {DURATION_MIN}…{DURATION_MAX}")


@dataclass
class FsmState:
    """Mutable position of one sequence in its compiled step list."""

    steps: tuple[Step, ...]
    index: int = 0
    pos: int = 0
    prefix: tuple[int, ...] = ()
    count: int = 0
    line_start: bool = False
    has_content: bool = False
    done: bool = False

    @property
    def step(self) -> Step:
        return self.steps[self.index]

    def next_step(self) -> None:
        """Move to the following step (resetting per-step counters)."""
        self.index += 1
        self.pos, self.prefix, self.count = 0, (), 0
        self.line_start = self.has_content = False
        if self.index >= len(self.steps):
            self.done = True


def _is_ws_start(text: str) -> bool:
    return bool(text) and text[0] in " \t"


class ConstraintTables:
    """Allowed-token tables for one tokenizer, and the state-machine transitions.

    Args:
        vocab: planner token layout.
        encode: text → token ids without special-token insertion.
        token_texts: decoded text of each tokenizer id (`len == vocab.tokenizer_size`).
    """

    def __init__(self, vocab: PlannerVocab, encode: Callable[[str], list[int]],
                 token_texts: Sequence[str]) -> None:
        if len(token_texts) != vocab.tokenizer_size:
            raise ValueError(f"token_texts has {len(token_texts)} entries, tokenizer has {vocab.tokenizer_size}")
        self.vocab = vocab
        self.encode = encode
        self.texts = token_texts
        self.newline = vocab.newline_id
        self.stop_ids = frozenset({vocab.eos_id, vocab.pad_id})
        n_codes = vocab.num_valid_codes
        code_block = (vocab.code_base, vocab.code_base + n_codes)
        self.codes = RowSet.from_blocks([code_block])
        self.codes_eos = RowSet.from_blocks([code_block, (vocab.eos_id, vocab.eos_id + 1)])
        self._singles: dict[int, RowSet] = {}
        self.eos_only = self.single(vocab.eos_id)
        self._build_masks()
        self._forced: dict[str, tuple[int, ...]] = {}
        self._tries: dict[tuple[str, int], Trie] = {}
        self.tries = {
            "bpm": self._trie("bpm:", [str(v) for v in range(BPM_MIN, BPM_MAX + 1)], exclusive=False),
            "keyscale": self._trie("keyscale:", list(KEYSCALES), exclusive=True),
            "language": self._trie("language:", list(LANGUAGES), exclusive=True),
            "timesignature": self._trie("timesignature:", [str(v) for v in TIME_SIGNATURES], exclusive=True),
        }
        self._device_masks: dict[tuple[str, str], torch.Tensor] = {}

    # --- table construction ---
    def single(self, token_id: int) -> RowSet:
        """Cached one-row set (forced tokens)."""
        if token_id not in self._singles:
            self._singles[token_id] = RowSet.from_ids([token_id])
        return self._singles[token_id]

    def _build_masks(self) -> None:
        v = self.vocab
        ordinary = torch.zeros(v.vocab_size, dtype=torch.bool)
        content = torch.zeros_like(ordinary)
        indent = torch.zeros_like(ordinary)
        special = set(v.special_ids)
        for tid, text in enumerate(self.texts):
            if tid in special or not text or "`" in text or "\r" in text:
                continue
            # A newline must end the token: text after it would start an unindented (= new field) line.
            if "\n" in text and not text.endswith("\n"):
                continue
            ordinary[tid] = True
            if "\n" not in text:
                content[tid] = bool(text.strip())
                indent[tid] = _is_ws_start(text)
        ordinary[v.code_base:v.code_base + v.num_code_slots] = False
        lyrics = torch.zeros_like(ordinary)
        lyrics[: v.tokenizer_size] = True
        lyrics[v.code_base:v.code_base + v.num_code_slots] = False
        for tid in (v.think_id, v.think_end_id, v.im_start_id):
            lyrics[tid] = False
        content[v.code_base:v.code_base + v.num_code_slots] = False
        self.masks = {"text": ordinary, "content": content, "indent": indent, "lyrics": lyrics}

    def forced_tokens(self, text: str) -> tuple[int, ...]:
        """Tokens of a fixed string, greedily taking the longest prefix that is a single token."""
        if text in self._forced:
            return self._forced[text]
        out: list[int] = []
        rest = text
        while rest:
            for end in range(len(rest), 0, -1):
                ids = self.encode(rest[:end])
                if len(ids) == 1:
                    out.append(ids[0])
                    rest = rest[end:]
                    break
            else:
                raise ValueError(f"no single-token prefix of {rest!r}")
        self._forced[text] = tuple(out)
        return self._forced[text]

    def _trie(self, context: str, values: Sequence[str], *, exclusive: bool) -> Trie:
        """Prefix tree of `values` as the tokenizer splits them after `context` (e.g. ``"bpm:"``)."""
        ctx = self.encode(context)
        children: dict[tuple[int, ...], set[int]] = {(): set()}
        complete: set[tuple[int, ...]] = set()
        for value in values:
            full = self.encode(f"{context} {value}")
            if full[: len(ctx)] != ctx or len(full) == len(ctx):
                raise ValueError(f"tokenizer splits {context!r} differently inside {context} {value!r}")
            path = tuple(full[len(ctx):])
            for i in range(len(path)):
                children.setdefault(path[:i], set()).add(path[i])
            children.setdefault(path, set())
            complete.add(path)
        allowed: dict[tuple[int, ...], RowSet] = {}
        for prefix, kids in children.items():
            if prefix in complete and (exclusive or not kids):
                ids = [self.newline]
            else:
                ids = sorted(kids) + ([self.newline] if prefix in complete else [])
            allowed[prefix] = RowSet.from_ids(ids)
        return Trie(allowed, {k: frozenset(s) for k, s in children.items()}, frozenset(complete))

    def duration_trie(self, max_duration: int) -> Trie:
        """Prefix tree of integer durations 10…max_duration (cached per maximum)."""
        key = ("duration", max_duration)
        if key not in self._tries:
            values = [str(v) for v in range(DURATION_MIN, max_duration + 1)]
            self._tries[key] = self._trie("duration:", values, exclusive=False)
        return self._tries[key]

    # --- compiling a request ---
    def compile(self, spec: ConstraintSpec) -> tuple[Step, ...]:
        """The step list for `spec`."""
        steps: list[Step] = []
        if spec.cot:
            steps.append(Step(Kind.FORCED, forced=self.forced_tokens("<think>") + self.forced_tokens("\n")))
            for name in FIELD_ORDER:
                if name not in spec.fields:
                    continue
                head = self.forced_tokens(f"{name}:")
                if name in spec.user_values:
                    value = tuple(self.encode(f" {spec.user_values[name]}\n"))
                    steps.append(Step(Kind.FORCED, field=name, forced=head + value))
                else:
                    steps.append(Step(Kind.FORCED, field=name, forced=head))
                    steps.append(self._value_step(name, spec))
            steps.append(Step(Kind.FORCED, forced=self.forced_tokens("</think>")))
        if spec.tail == "codes":
            steps.append(Step(Kind.CODES, target=spec.target_codes))
        elif spec.tail == "lyrics":
            steps.append(Step(Kind.LYRICS))
        else:
            steps.append(Step(Kind.EOS))
        return tuple(steps)

    def _value_step(self, name: str, spec: ConstraintSpec) -> Step:
        if name == "caption":
            return Step(Kind.TEXT, field=name, multiline=True, max_tokens=spec.max_caption_tokens)
        if name == "genres":
            return Step(Kind.TEXT, field=name, multiline=False, max_tokens=spec.max_genres_tokens)
        if name == "duration":
            return Step(Kind.TRIE, field=name, trie=self.duration_trie(spec.max_duration))
        if name == "language":
            return Step(Kind.LANGUAGE, field=name, trie=self.tries["language"])
        return Step(Kind.TRIE, field=name, trie=self.tries[name])

    def start(self, spec: ConstraintSpec) -> FsmState:
        """A fresh state at the first step of `spec`."""
        return FsmState(self.compile(spec))

    # --- per-step queries ---
    def rows(self, st: FsmState) -> RowSet | None:
        """LM-head rows this state can use (None: it needs the whole vocabulary)."""
        step = st.step
        if step.kind is Kind.FORCED:
            return self.single(step.forced[st.pos])
        if step.kind in (Kind.TRIE, Kind.LANGUAGE):
            assert step.trie is not None
            return step.trie.allowed[st.prefix]
        if step.kind is Kind.CODES:
            if step.target is None:
                return self.codes_eos
            return self.codes if st.count < step.target else self.eos_only
        if step.kind is Kind.EOS:
            return self.eos_only
        return None

    def _mask(self, name: str, device: torch.device) -> torch.Tensor:
        key = (name, str(device))
        if key not in self._device_masks:
            self._device_masks[key] = self.masks[name].to(device)
        return self._device_masks[key]

    @staticmethod
    def _one_hot(index: int, n: int, device: torch.device) -> torch.Tensor:
        keep = torch.zeros(n, dtype=torch.bool, device=device)
        keep[index] = True
        return keep

    def constrain(self, st: FsmState, logits: torch.Tensor, rows: RowSet | None) -> torch.Tensor | None:
        """Which entries of `logits` are allowed now (None: all of them).

        Caption ends and the greedy language choice depend on `logits`, so this may move `st` on.

        Args:
            st: the sequence's state (`rows` must be what `rows(st)` returned before this call).
            logits: `(N,)` guided logits over `rows` (or the whole vocabulary when `rows` is None).
            rows: the rows `logits` covers.

        Returns:
            `(N,)` bool keep-mask, or None.
        """
        step = st.step
        n, device = logits.shape[-1], logits.device
        natural = self.rows(st)
        if natural is not None:
            greedy = step.kind is Kind.LANGUAGE and not st.prefix
            if rows is None:
                ids = natural.on(device)
                if greedy:
                    return self._one_hot(int(ids[torch.argmax(logits[ids])]), n, device)
                keep = torch.zeros(n, dtype=torch.bool, device=device)
                keep[ids] = True
                return keep
            if rows is not natural:
                raise ValueError("logits cover other rows than this state uses")
            # Greedy language: only the best-scoring valid first token survives (official behaviour).
            return self._one_hot(int(torch.argmax(logits)), n, device) if greedy else None
        if rows is not None:
            raise ValueError("free-text states need logits over the whole vocabulary")
        if step.kind is Kind.LYRICS:
            return self._mask("lyrics", device)
        if st.line_start:
            top = int(torch.argmax(logits))
            keep_going = (st.count < step.max_tokens and top < len(self.texts)
                          and _is_ws_start(self.texts[top]))
            if keep_going:
                return self._mask("indent", device)
            # The caption ends; the token sampled now is the next field's first forced token.
            st.next_step()
            nxt = self.rows(st)
            assert nxt is not None and len(nxt) == 1
            return self._one_hot(int(nxt.ids[0]), n, device)
        if not st.has_content:
            # The first token carries text, so a field is never empty (and never only whitespace).
            return self._mask("content", device)
        if st.count >= step.max_tokens:
            return self._one_hot(self.newline, n, device)
        return self._mask("text", device)

    def advance(self, st: FsmState, token: int) -> None:
        """Consume the sampled `token`.

        Raises:
            ValueError: `token` is not allowed in this state (the decode loop must not produce that).
        """
        if st.done:
            raise ValueError("state machine already finished")
        step = st.step
        kind = step.kind
        if kind is Kind.FORCED:
            if token != step.forced[st.pos]:
                raise ValueError(f"expected forced token {step.forced[st.pos]}, got {token}")
            st.pos += 1
            if st.pos == len(step.forced):
                st.next_step()
        elif kind in (Kind.TRIE, Kind.LANGUAGE):
            assert step.trie is not None
            if token == self.newline and st.prefix in step.trie.complete:
                st.next_step()
            elif token in step.trie.children.get(st.prefix, ()):
                st.prefix = (*st.prefix, token)
            else:
                raise ValueError(f"token {token} not allowed in field {step.field!r} after {st.prefix}")
        elif kind is Kind.TEXT:
            self._advance_text(st, token)
        elif kind is Kind.CODES:
            if token == self.vocab.eos_id:
                if step.target is not None and st.count < step.target:
                    raise ValueError(f"EOS after {st.count} of {step.target} codes")
                st.done = True
            elif self.vocab.code_of(token) is None:
                raise ValueError(f"token {token} is not an audio code")
            elif step.target is not None and st.count >= step.target:
                raise ValueError(f"already {st.count} codes; only EOS may follow")
            else:
                st.count += 1
        elif kind is Kind.LYRICS:
            if token in self.stop_ids:
                st.done = True
        elif token == self.vocab.eos_id:
            st.done = True
        else:
            raise ValueError(f"expected EOS, got {token}")

    def _advance_text(self, st: FsmState, token: int) -> None:
        if not bool(self.masks["text"][token]):
            raise ValueError(f"token {token} not allowed in free-text field {st.step.field!r}")
        text = self.texts[token]
        st.count += 1
        if "\n" in text:
            if not st.step.multiline:
                st.next_step()
                return
            st.line_start = True
        else:
            st.line_start = False
            st.has_content = st.has_content or bool(text.strip())
