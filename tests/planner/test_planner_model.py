"""Planner model wrapper: loading, audio-code token mapping, head slicing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from encore.errors import CheckpointError
from encore.models.planner import NUM_VALID_AUDIO_CODES, Planner, PlannerVocab, RowSet
from encore.pipeline.random_planner import NUM_CODE_SLOTS


def test_audio_code_tokens_are_base_plus_n(tiny_planner: Planner, planner_tokenizer) -> None:
    v = tiny_planner.vocab
    assert v.num_code_slots == NUM_CODE_SLOTS and v.num_valid_codes == NUM_VALID_AUDIO_CODES == 64_000
    for n in (0, 1, 4321, 63_999):
        tid = planner_tokenizer.convert_tokens_to_ids(f"<|audio_code_{n}|>")
        assert v.code_token_id(n) == tid == v.code_base + n
        assert v.code_of(tid) == n
    last_slot = planner_tokenizer.convert_tokens_to_ids("<|audio_code_65534|>")
    assert v.code_of(last_slot) is None  # a slot, but not a valid FSQ index
    with pytest.raises(ValueError):
        v.code_token_id(64_000)
    assert tiny_planner.codes_to_ids([0, 7]) == [v.code_base, v.code_base + 7]
    assert tiny_planner.decode(tiny_planner.codes_to_ids([5, 63_999])) == "<|audio_code_5|><|audio_code_63999|>"


def test_vocab_rejects_a_gap_in_the_code_block(planner_tokenizer) -> None:
    class Shifted:
        """A tokenizer whose code 7 sits at the wrong id."""

        def __init__(self, inner) -> None:
            self.inner = inner

        def get_added_vocab(self) -> dict[str, int]:
            vocab = dict(self.inner.get_added_vocab())
            vocab["<|audio_code_7|>"] += 1
            return vocab

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def __len__(self) -> int:
            return len(self.inner)

    with pytest.raises(ValueError, match="audio_code_7"):
        PlannerVocab.from_tokenizer(Shifted(planner_tokenizer), 300_000)


def test_special_tokens(tiny_planner: Planner, planner_tokenizer) -> None:
    v = tiny_planner.vocab
    tok = planner_tokenizer.convert_tokens_to_ids
    assert (v.eos_id, v.pad_id, v.im_start_id, v.think_id, v.think_end_id) == (
        tok("<|im_end|>"), tok("<|endoftext|>"), tok("<|im_start|>"), tok("<think>"), tok("</think>"))
    assert tiny_planner.encode("\n") == [v.newline_id]
    assert planner_tokenizer.encode("hi", add_special_tokens=True) == planner_tokenizer.encode(
        "hi", add_special_tokens=False)  # no BOS/EOS appended


def test_head_slicing_matches_full_logits(tiny_planner: Planner) -> None:
    v = tiny_planner.vocab
    hidden = torch.randn(3, tiny_planner.config.hidden_size)
    full = tiny_planner.logits(hidden)
    assert full.shape == (3, v.vocab_size) and full.dtype == torch.float32
    codes = RowSet.from_blocks([(v.code_base, v.code_base + 64_000), (v.eos_id, v.eos_id + 1)])
    sliced = tiny_planner.logits(hidden, codes)
    torch.testing.assert_close(sliced, full[:, codes.ids], rtol=1e-6, atol=1e-6)
    scattered = RowSet.from_ids([5, 9, 2, 11, 40, 41, 100])  # many blocks: gathered rows
    torch.testing.assert_close(tiny_planner.logits(hidden, scattered), full[:, scattered.ids], rtol=1e-6, atol=1e-6)


def test_from_pretrained_round_trip_bf16(planner_dir: Path, tiny_planner: Planner) -> None:
    loaded = Planner.from_pretrained(planner_dir, dtype=torch.bfloat16)  # one load: the tokenizer is slow to read
    assert loaded.vocab == tiny_planner.vocab
    assert loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()  # tied
    ref = tiny_planner.model.state_dict()
    got = loaded.model.state_dict()
    assert set(got) == set(ref)
    for name, tensor in got.items():
        assert torch.equal(tensor, ref[name].to(torch.bfloat16)), name
    ids = torch.tensor([tiny_planner.encode("bpm: 120\ncaption: warm bass")])
    mask, pos = torch.ones_like(ids), torch.arange(ids.shape[1])[None]
    with torch.inference_mode():
        hidden = loaded.forward(ids, mask, pos, loaded.new_cache())
        expected = tiny_planner.forward(ids, mask, pos, tiny_planner.new_cache())
    assert hidden.dtype == torch.bfloat16
    torch.testing.assert_close(hidden.float(), expected, rtol=0.05, atol=0.05)


def test_from_pretrained_errors_name_the_file(planner_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Planner.from_pretrained(tmp_path / "missing")
    broken = tmp_path / "broken"
    shutil.copytree(planner_dir, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="safetensors"):
        Planner.from_pretrained(broken)
    other = tmp_path / "other"
    shutil.copytree(planner_dir, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "llama"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="qwen3"):
        Planner.from_pretrained(other)
