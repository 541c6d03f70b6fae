"""LoRA adapters: injection, scale/enable/disable semantics, several adapters, PEFT/diffusers file layout."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from encore.errors import CheckpointError, InvalidRequest
from encore.models.acestep import AceStepModel
from encore.models.config import AceStepConfig
from encore.training.lora import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterSet,
    LoraConfig,
    apply_loras,
)

CONFIG = AceStepConfig.tiny()


def _decoder(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return AceStepModel(CONFIG).eval().decoder


def _inputs(seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 21, 64, generator=g)
    ctx = torch.randn(2, 21, 128, generator=g)
    enc = torch.randn(2, 9, CONFIG.enc_hidden_size, generator=g)
    t = torch.tensor([0.4, 0.9])
    return x, t, t, enc, ctx


def _randomise(adapter: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)


@torch.no_grad()
def _run(decoder: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return decoder(*inputs)


def test_default_targets_are_every_attention_projection() -> None:
    adapters = AdapterSet.of(_decoder())
    adapter = adapters.add("a", LoraConfig(rank=4, alpha=8))
    expected = {f"layers.{i}.{kind}.{proj}" for i in range(CONFIG.num_hidden_layers)
                for kind in ("self_attn", "cross_attn") for proj in ("q_proj", "k_proj", "v_proj", "o_proj")}
    assert set(adapter.module_names) == expected
    assert AdapterSet.of(adapters.root) is adapters  # one set per module tree


def test_target_module_selection_and_regex() -> None:
    adapters = AdapterSet.of(_decoder())
    only_q = adapters.add("q", LoraConfig(rank=2, target_modules=("self_attn.q_proj",)))
    assert only_q.module_names == ("layers.0.self_attn.q_proj", "layers.1.self_attn.q_proj")
    regex = adapters.add("r", LoraConfig(rank=2, target_modules=(r"re:layers\.1\.cross_attn\.(k|v)_proj",)))
    assert regex.module_names == ("layers.1.cross_attn.k_proj", "layers.1.cross_attn.v_proj")
    with pytest.raises(InvalidRequest, match="target_modules"):
        adapters.add("none", LoraConfig(rank=2, target_modules=("does_not_exist",)))
    with pytest.raises(InvalidRequest, match="already loaded"):
        adapters.add("q", LoraConfig(rank=2))


def test_fresh_adapter_is_a_no_op_and_trains() -> None:
    decoder = _decoder()
    inputs = _inputs()
    base = _run(decoder, inputs)
    adapter = AdapterSet.of(decoder).add("a", LoraConfig(rank=4, alpha=8, dropout=0.0),
                                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(_run(decoder, inputs), base)  # B starts at zero
    decoder.requires_grad_(False)
    adapter.requires_grad_(True)
    decoder(*inputs).square().mean().backward()
    grads = [p.grad for p in adapter.parameters()]
    assert all(g is not None for g in grads)
    assert any(float(g.abs().max()) > 0 for g in grads)  # dL/dB != 0 even though B = 0
    assert all(p.grad is None for p in decoder.parameters())


def test_scale_enable_disable_touch_adapter_only_and_scale0_is_bit_identical() -> None:
    decoder = _decoder()
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    inputs = _inputs()
    base = _run(decoder, inputs)
    adapters = AdapterSet.of(decoder)
    _randomise(adapters.add("a", LoraConfig(rank=4, alpha=8)), seed=3)
    full = _run(decoder, inputs)
    assert not torch.allclose(full, base)
    adapters.set_scale("a", 0.0)
    assert torch.equal(_run(decoder, inputs), base)
    adapters.set_scale("a", 0.5)
    half = _run(decoder, inputs)
    assert not torch.equal(half, base) and not torch.equal(half, full)
    adapters.set_scale("a", 1.0)
    adapters.disable("a")
    assert torch.equal(_run(decoder, inputs), base)
    adapters.enable("a")
    assert torch.equal(_run(decoder, inputs), full)
    adapters.remove("a")
    assert torch.equal(_run(decoder, inputs), base)
    assert not any(m._forward_hooks for m in decoder.modules())  # unload removes every hook
    after = decoder.state_dict()
    assert before.keys() == after.keys()  # the model's state_dict never gains adapter keys
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_scale_multiplies_the_update_of_each_projection() -> None:
    decoder = _decoder()
    q = decoder.layers[0].self_attn.q_proj
    x = torch.randn(3, 5, CONFIG.hidden_size)
    base = q(x)
    adapters = AdapterSet.of(decoder)
    adapter = adapters.add("a", LoraConfig(rank=4, alpha=16))
    _randomise(adapter, seed=4)
    layer = adapter.layer("layers.0.self_attn.q_proj")
    delta = layer.lora_B.weight @ layer.lora_A.weight * (16 / 4)
    torch.testing.assert_close(q(x), base + x @ delta.T, rtol=1e-5, atol=1e-5)
    adapters.set_scale("a", 0.25)
    torch.testing.assert_close(q(x), base + 0.25 * (x @ delta.T), rtol=1e-5, atol=1e-5)


def test_several_adapters_add_up_and_switch_independently() -> None:
    decoder = _decoder()
    lin = decoder.layers[1].cross_attn.v_proj
    x = torch.randn(2, 4, CONFIG.hidden_size)
    base = lin(x)
    adapters = AdapterSet.of(decoder)
    for name, seed in (("a", 5), ("b", 6)):
        _randomise(adapters.add(name, LoraConfig(rank=2, alpha=2)), seed=seed)
    adapters.disable("b")
    only_a = lin(x) - base
    adapters.enable("b")
    adapters.disable("a")
    only_b = lin(x) - base
    adapters.enable("a")
    adapters.set_scale("b", 0.5)
    torch.testing.assert_close(lin(x), base + only_a + 0.5 * only_b, rtol=1e-5, atol=1e-6)
    assert adapters.active() == [("a", 1.0), ("b", 0.5)]
    assert [s.name for s in adapters.status()] == ["a", "b"]


def test_export_import_round_trip_is_exact(tmp_path: Path) -> None:
    decoder = _decoder()
    inputs = _inputs()
    adapters = AdapterSet.of(decoder)
    _randomise(adapters.add("a", LoraConfig(rank=4, alpha=8, dropout=0.05)), seed=7)
    expected = _run(decoder, inputs)
    out = adapters.save("a", tmp_path / "adapter", base_model="tiny")
    assert sorted(p.name for p in out.iterdir()) == [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    keys = sorted(load_file(out / ADAPTER_WEIGHTS))
    assert keys[0] == "base_model.model.layers.0.cross_attn.k_proj.lora_A.weight"
    cfg = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["base_model_name_or_path"]) == ("LORA", 4, 8, "tiny")
    fresh = _decoder()
    loaded = AdapterSet.of(fresh).load(out, name="x")
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(_run(fresh, inputs), expected)
    # A bare .safetensors file next to its adapter_config.json works too.
    again = _decoder()
    AdapterSet.of(again).load(out / ADAPTER_WEIGHTS)
    assert torch.equal(_run(again, inputs), expected)


def test_official_peft_loader_reads_our_export(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    decoder = _decoder()
    inputs = _inputs()
    adapters = AdapterSet.of(decoder)
    _randomise(adapters.add("a", LoraConfig(rank=4, alpha=16)), seed=8)
    expected = _run(decoder, inputs)
    adapters.save("a", tmp_path / "ad")
    plain = _decoder()  # same base weights, no adapters: what the official handler wraps
    wrapped = peft.PeftModel.from_pretrained(plain, str(tmp_path / "ad"))
    with torch.no_grad():
        got = wrapped(*inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_we_read_adapters_saved_by_peft(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    plain = _decoder()
    config = peft.LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj", "o_proj"],
                             rank_pattern={"layers.1.self_attn.q_proj": 2}, init_lora_weights=False)
    wrapped = peft.get_peft_model(plain, config)
    inputs = _inputs()
    with torch.no_grad():
        expected = wrapped(*inputs)
    wrapped.save_pretrained(str(tmp_path / "peft"))
    ours = _decoder()
    adapter = AdapterSet.of(ours).load(tmp_path / "peft")
    assert adapter.layer("layers.1.self_attn.q_proj").rank == 2
    torch.testing.assert_close(_run(ours, inputs), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parity
def test_diffusers_loader_reads_our_export(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    from diffusers import AceStepPipeline
    from helpers.acestep_reference import build_reference, encore_from_reference

    ref = build_reference(CONFIG)
    ours = encore_from_reference(CONFIG, ref).decoder
    adapters = AdapterSet.of(ours)
    _randomise(adapters.add("a", LoraConfig(rank=4, alpha=16)), seed=9)  # alpha != rank: scale must survive
    adapters.save("a", tmp_path / "ad")
    state, metadata = AceStepPipeline.lora_state_dict(str(tmp_path / "ad"), return_lora_metadata=True)
    assert all(".to_" in k for k in state)  # diffusers converted q_proj -> to_q, o_proj -> to_out.0
    transformer = ref["transformer"]
    transformer.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name="a")
    transformer.eval()  # PEFT creates its dropout modules in training mode
    inputs = _inputs()
    with torch.no_grad():
        expected = transformer(*inputs, return_dict=False)[0]
    torch.testing.assert_close(_run(ours, inputs), expected, rtol=1e-5, atol=1e-5)


def test_diffusers_layout_files_load(tmp_path: Path) -> None:
    decoder = _decoder()
    adapters = AdapterSet.of(decoder)
    _randomise(adapters.add("a", LoraConfig(rank=3, alpha=6)), seed=10)
    inputs = _inputs()
    expected = _run(decoder, inputs)
    out = adapters.save("a", tmp_path / "ad")
    # Rewrite as a diffusers-style single file (to_q names, `transformer.` prefix, config only in the header).
    from safetensors import safe_open

    with safe_open(str(out / ADAPTER_WEIGHTS), framework="pt") as f:
        header = f.metadata()
    renamed = {}
    for key, value in load_file(out / ADAPTER_WEIGHTS).items():
        key = key.replace("base_model.model.", "transformer.")
        for old, new in (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("o_proj", "to_out.0")):
            key = key.replace(f".{old}.", f".{new}.")
        renamed[key] = value
    save_file(renamed, str(tmp_path / "diffusers_lora.safetensors"), metadata=header)
    fresh = _decoder()
    loaded = AdapterSet.of(fresh).load(tmp_path / "diffusers_lora.safetensors")
    assert loaded.config.alpha == 6
    assert torch.equal(_run(fresh, inputs), expected)


@pytest.mark.parametrize("case", ["missing", "garbage", "not_lora", "unpaired", "nan", "shape", "dora"])
def test_bad_adapter_files_raise_checkpoint_error(tmp_path: Path, case: str) -> None:
    good = tmp_path / "good"
    src = AdapterSet.of(_decoder())
    _randomise(src.add("a", LoraConfig(rank=2, alpha=2)), seed=11)
    src.save("a", good)
    tensors = load_file(good / ADAPTER_WEIGHTS)
    target = tmp_path / "bad"
    target.mkdir()
    (target / ADAPTER_CONFIG).write_text((good / ADAPTER_CONFIG).read_text())
    first = min(tensors)
    if case == "garbage":
        (target / ADAPTER_WEIGHTS).write_bytes(b"\x00" * 64)
    elif case == "not_lora":
        save_file({**tensors, "layers.0.mlp.up_proj.weight": torch.zeros(2, 2)}, str(target / ADAPTER_WEIGHTS))
    elif case == "unpaired":
        save_file({k: v for k, v in tensors.items() if k != first}, str(target / ADAPTER_WEIGHTS))
    elif case == "nan":
        save_file({**tensors, first: torch.full_like(tensors[first], float("nan"))}, str(target / ADAPTER_WEIGHTS))
    elif case == "shape":
        save_file({**tensors, first: torch.zeros(2, 7)}, str(target / ADAPTER_WEIGHTS))
    elif case == "dora":
        save_file(tensors, str(target / ADAPTER_WEIGHTS))
        cfg = json.loads((good / ADAPTER_CONFIG).read_text())
        (target / ADAPTER_CONFIG).write_text(json.dumps({**cfg, "use_dora": True}))
    with pytest.raises(CheckpointError) as info:
        AdapterSet.of(_decoder()).load(target)
    assert str(target) in str(info.value)


def test_apply_loras_activates_exactly_the_requested_set(tmp_path: Path) -> None:
    source = AdapterSet.of(_decoder())
    for name, seed in (("a", 12), ("b", 13)):
        _randomise(source.add(name, LoraConfig(rank=2, alpha=4)), seed=seed)
        source.save(name, tmp_path / name)
    decoder = _decoder()
    inputs = _inputs()
    base = _run(decoder, inputs)
    spec = SimpleNamespace
    names = apply_loras(decoder, [spec(path=str(tmp_path / "a"), scale=1.0), spec(path=str(tmp_path / "b"),
                                                                                 scale=0.5)])
    both = _run(decoder, inputs)
    assert AdapterSet.of(decoder).active() == [(names[0], 1.0), (names[1], 0.5)]
    apply_loras(decoder, [spec(path=str(tmp_path / "b"), scale=0.5)])
    assert len(AdapterSet.of(decoder).active()) == 1
    assert not torch.equal(_run(decoder, inputs), both)
    apply_loras(decoder, [spec(path=str(tmp_path / "a"), scale=1.0), spec(path=str(tmp_path / "b"), scale=0.5)])
    assert torch.equal(_run(decoder, inputs), both)  # cached adapters, same result
    apply_loras(decoder, [])
    assert torch.equal(_run(decoder, inputs), base)
    with pytest.raises(InvalidRequest, match="twice"):
        apply_loras(decoder, [spec(path=str(tmp_path / "a"), scale=1.0)] * 2)
    # A file replaced on disk is reloaded.
    source.save("b", tmp_path / "a")
    apply_loras(decoder, [spec(path=str(tmp_path / "a"), scale=1.0)])
    apply_loras(copy.deepcopy(decoder), [])


def test_dropout_masks_depend_only_on_each_items_generator() -> None:
    decoder = _decoder()
    adapters = AdapterSet.of(decoder)
    adapter = adapters.add("a", LoraConfig(rank=4, alpha=4, dropout=0.5))
    _randomise(adapter, seed=14)
    adapter.train()
    q = decoder.layers[0].self_attn.q_proj
    x = torch.randn(4, 6, CONFIG.hidden_size)

    def gens(ids: list[int]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(100 + i) for i in ids]

    adapters.set_dropout_generators(gens([0, 1, 2, 3]))
    whole = q(x)
    adapters.set_dropout_generators(gens([2, 3]))
    part = q(x[2:])
    torch.testing.assert_close(part, whole[2:], rtol=0, atol=1e-6)
    adapter.eval()
    adapters.set_dropout_generators(None)
    assert torch.equal(q(x), q(x))  # no dropout at inference
