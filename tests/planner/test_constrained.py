"""The constrained-decoding state machine, driven alone with random logits (no LM)."""

from __future__ import annotations

import random

import pytest
import torch

from encore.models.planner import RowSet
from encore.pipeline.planner_prompts import parse_cot
from encore.sampling import lm_sampling as S
from encore.sampling.constrained import (
    FIELD_ORDER,
    KEYSCALES,
    LANGUAGES,
    TIME_SIGNATURES,
    ConstraintSpec,
    ConstraintTables,
    FsmState,
    Kind,
)

COT_FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")


def _values(tables: ConstraintTables, trie, decode) -> set[str]:
    return {decode(list(p)).strip() for p in trie.complete}


def test_tries_accept_exactly_the_valid_values(tables: ConstraintTables, planner_tokenizer) -> None:
    decode = planner_tokenizer.decode
    assert _values(tables, tables.tries["bpm"], decode) == {str(v) for v in range(30, 301)}
    assert _values(tables, tables.duration_trie(600), decode) == {str(v) for v in range(10, 601)}
    assert _values(tables, tables.duration_trie(120), decode) == {str(v) for v in range(10, 121)}
    assert _values(tables, tables.tries["keyscale"], decode) == set(KEYSCALES)
    assert len(KEYSCALES) == 70
    assert _values(tables, tables.tries["language"], decode) == set(LANGUAGES)
    assert _values(tables, tables.tries["timesignature"], decode) == {str(v) for v in TIME_SIGNATURES}


def test_numeric_newline_only_when_value_complete(tables: ConstraintTables, planner_tokenizer) -> None:
    trie = tables.tries["bpm"]
    enc = lambda s: planner_tokenizer.encode(s, add_special_tokens=False)
    nl = tables.newline
    path3 = tuple(enc("bpm: 3")[len(enc("bpm:")):])
    path30 = tuple(enc("bpm: 30")[len(enc("bpm:")):])
    path300 = tuple(enc("bpm: 300")[len(enc("bpm:")):])
    assert nl not in trie.allowed[path3].ids.tolist()           # "3" is not a tempo yet
    allowed30 = trie.allowed[path30].ids.tolist()
    assert nl in allowed30 and path300[-1] in allowed30          # "30" may end or become "300"
    assert trie.allowed[path300].ids.tolist() == [nl]            # "300" must end
    assert tables.tries["keyscale"].allowed[()].ids.numel() >= 7


def _sample(tables: ConstraintTables, st: FsmState, gen: torch.Generator, rng: random.Random,
            bias: torch.Tensor | None, pool: torch.Tensor) -> int:
    rows = tables.rows(st)
    n = tables.vocab.vocab_size if rows is None else len(rows)
    # Random logits from a pool of random vectors (drawing a fresh vocabulary-sized vector per step is slow).
    logits = pool[rng.randrange(len(pool)), None, :n] * rng.choice([0.5, 2.0, 8.0])
    if rows is None and bias is not None:
        logits = logits + bias
    keep = tables.constrain(st, logits[0], rows)
    logits = S.apply_mask(logits, keep)
    if n <= 4096:  # sorting a whole vocabulary per step would make 1,000 cases slow; tested elsewhere
        logits = S.apply_top_p(S.apply_top_k(logits, rng.choice([None, 0, 5, 50])), rng.choice([None, 0.5, 0.9]))
    u = torch.rand(1, generator=gen, dtype=torch.float64)
    idx = int(S.sample_tokens(logits, rng.choice([0.0, 0.7, 1.0, 1.5]), u)[0])
    token = int(rows.ids[idx]) if rows is not None else idx
    if keep is not None:
        assert bool(keep[idx]), "sampled a masked token"
    return token


def _random_spec(rng: random.Random) -> tuple[ConstraintSpec, dict[str, str]]:
    tail = rng.choice(["stop", "lyrics", "codes", "codes_only"])
    if tail == "codes_only":
        return ConstraintSpec(cot=False, tail="codes", target_codes=rng.randint(0, 12)), {}
    fields = [f for f in COT_FIELDS if f not in ("caption", "language") or rng.random() < 0.7]
    if rng.random() < 0.3:
        fields.append("genres")
    max_duration = rng.choice([10, 37, 120, 600])
    user: dict[str, str] = {}
    pickers = {
        "bpm": lambda: str(rng.randint(30, 300)),
        "duration": lambda: str(rng.randint(10, max_duration)),
        "keyscale": lambda: rng.choice(KEYSCALES),
        "language": lambda: rng.choice(LANGUAGES),
        "timesignature": lambda: str(rng.choice(TIME_SIGNATURES)),
    }
    for name, pick in pickers.items():
        if name in fields and rng.random() < 0.3:
            user[name] = pick()
    spec = ConstraintSpec(fields=tuple(fields), user_values=user, tail=tail,  # type: ignore[arg-type]
                          target_codes=rng.randint(0, 12) if tail == "codes" else None,
                          max_duration=max_duration, max_caption_tokens=rng.randint(1, 10),
                          max_genres_tokens=rng.randint(1, 6))
    return spec, user


def _check_case(tables: ConstraintTables, decode, spec: ConstraintSpec, user: dict[str, str],
                ids: list[int]) -> None:
    v = tables.vocab
    if spec.cot:
        assert v.think_end_id in ids and ids[0] == v.think_id
        end = ids.index(v.think_end_id)
        text = decode(ids[1:end])
        fields = parse_cot(text)
        assert list(fields) == [f for f in FIELD_ORDER if f in spec.fields], text  # all, in YAML order
        for name, value in fields.items():
            if name in user:
                assert str(value) == user[name]
        assert 30 <= fields["bpm"] <= 300
        assert 10 <= fields["duration"] <= spec.max_duration or user.get("duration") == str(fields["duration"])
        assert fields["timesignature"] in TIME_SIGNATURES
        assert fields["keyscale"] in KEYSCALES
        if "language" in fields:
            assert fields["language"] in LANGUAGES
        for name in ("caption", "genres"):
            if name in fields:
                assert isinstance(fields[name], str) and fields[name].strip()
                assert "`" not in fields[name]
        rest = ids[end + 1:]
    else:
        rest = ids
    codes = [t for t in rest if v.code_of(t) is not None]
    if spec.tail == "codes":
        assert len(codes) == spec.target_codes and rest == codes + [v.eos_id]
    else:
        assert not codes
        assert rest[-1] == v.eos_id or (spec.tail == "lyrics" and rest[-1] in tables.stop_ids)
        if spec.tail == "stop":
            assert rest == [v.eos_id]


def test_property_1000_random_decodes_parse_and_respect_constraints(tables: ConstraintTables,
                                                                      planner_tokenizer) -> None:
    rng = random.Random(1234)
    gen = torch.Generator().manual_seed(1234)
    texts = tables.texts
    ws_bias = torch.zeros(tables.vocab.vocab_size)
    for tid, t in enumerate(texts):
        if t[:1] in (" ", "\t") or t.endswith("\n"):
            ws_bias[tid] = 6.0
    stop_bias = torch.zeros(tables.vocab.vocab_size)
    stop_bias[tables.vocab.eos_id] = 12.0
    pool = torch.randn(64, tables.vocab.vocab_size, generator=gen)
    for case in range(1000):
        spec, user = _random_spec(rng)
        st = tables.start(spec)
        bias = rng.choice([None, ws_bias, ws_bias + stop_bias])
        ids: list[int] = []
        for _ in range(400):
            # Random lyrics would rarely hit EOS: favour it there so each case ends.
            tok = _sample(tables, st, gen, rng, stop_bias if st.step.kind is Kind.LYRICS else bias,
                          pool)
            tables.advance(st, tok)
            ids.append(tok)
            if st.done:
                break
        assert st.done, f"case {case}: did not finish"
        _check_case(tables, planner_tokenizer.decode, spec, user, ids)


def test_code_phase_counts_exactly_then_forces_eos(tables: ConstraintTables) -> None:
    st = tables.start(ConstraintSpec(cot=False, tail="codes", target_codes=3))
    for _ in range(3):
        assert tables.rows(st) is tables.codes
        tables.advance(st, tables.vocab.code_base + 5)
    assert tables.rows(st) is tables.eos_only
    with pytest.raises(ValueError):
        tables.advance(st, tables.vocab.code_base)
    tables.advance(st, tables.vocab.eos_id)
    assert st.done
    free = tables.start(ConstraintSpec(cot=False, tail="codes"))
    assert tables.rows(free) is tables.codes_eos
    assert len(tables.codes) == 64_000


def test_field_order_and_injection(tables: ConstraintTables, planner_tokenizer) -> None:
    spec = ConstraintSpec(fields=tuple(f for f in FIELD_ORDER), user_values={"keyscale": "B♭ major", "bpm": "90"})
    steps = tables.start(spec).steps
    named = [s.field for s in steps if s.kind is Kind.FORCED and s.field]
    assert named == list(FIELD_ORDER)
    ks = next(s for s in steps if s.field == "keyscale")
    assert planner_tokenizer.decode(list(ks.forced)) == "keyscale: B♭ major\n"
    assert steps[-1].kind is Kind.EOS


def test_caption_needs_whole_vocab_and_bans_codes(tables: ConstraintTables, planner_tokenizer) -> None:
    st = tables.start(ConstraintSpec(fields=("bpm", "caption", "duration", "keyscale", "timesignature"),
                                     user_values={"bpm": "100"}))
    for tok in st.steps[0].forced + st.steps[1].forced + st.steps[2].forced:
        tables.advance(st, tok)
    assert st.step.kind is Kind.TEXT and tables.rows(st) is None
    logits = torch.zeros(tables.vocab.vocab_size)
    keep = tables.constrain(st, logits, None)
    assert keep is not None
    assert not keep[tables.vocab.code_base:].any()
    assert not keep[tables.newline]  # no empty caption
    assert not keep[planner_tokenizer.encode(" ", add_special_tokens=False)[0]]  # nor a blank one
    with pytest.raises(ValueError):
        tables.constrain(st, logits[:10], RowSet.from_ids(list(range(10))))


def test_caption_ends_when_top_token_is_unindented(tables: ConstraintTables, planner_tokenizer) -> None:
    enc = lambda s: planner_tokenizer.encode(s, add_special_tokens=False)
    spec = ConstraintSpec(fields=("caption", "duration"), user_values={"duration": "30"}, tail="stop")
    st = tables.start(spec)
    for tok in st.steps[0].forced + st.steps[1].forced:
        tables.advance(st, tok)
    for tok in enc(" warm bass") + [tables.newline]:
        tables.advance(st, tok)
    assert st.line_start
    logits = torch.zeros(tables.vocab.vocab_size)
    indented = enc(" more")[0]
    logits[indented] = 5.0  # top-1 starts with a space: the caption continues, indented
    keep = tables.constrain(st, logits.clone(), None)
    assert keep is not None and keep[indented] and not keep[enc("x")[0]]
    logits[indented] = 0.0
    logits[enc("x")[0]] = 5.0  # top-1 is a new field name: the caption ends
    keep = tables.constrain(st, logits, None)
    assert st.step.field == "duration" and int(keep.nonzero()) == st.step.forced[0]
