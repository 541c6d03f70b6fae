"""`load_components` on random checkpoints: official and diffusers layouts, corrupt trees, round trips."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from encore.errors import CheckpointError
from encore.models.config import AceStepConfig
from encore.pipeline import convert
from encore.pipeline.loading import Components, load_components, load_pipeline, resolve_checkpoint
from encore.pipeline.random_checkpoint import write_random_checkpoint
from encore.pipeline.saving import save_components

DIT = "acestep-v15-turbo"


@pytest.fixture(scope="module")
def official_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("official")
    write_random_checkpoint(root, seed=0)
    return root


@pytest.fixture(scope="module")
def loaded(official_root) -> Components:
    return load_components(official_root / DIT, device="cpu", dtype="float32")


@pytest.fixture
def tree(official_root, tmp_path) -> Path:
    """A private copy of the random official tree that a test may corrupt."""
    dest = tmp_path / "ckpt"
    shutil.copytree(official_root, dest)
    return dest


def _state(components: Components) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "model": components.model.state_dict(),
        "vae": components.vae.state_dict(),
        "text": components.text_encoder.model.state_dict(),
        "silence": {"s": components.silence_latent},
    }


def _assert_same_state(a: Components, b: Components, *, exact: bool = True) -> None:
    sa, sb = _state(a), _state(b)
    for part in sa:
        assert sa[part].keys() == sb[part].keys(), part
        for key in sa[part]:
            if exact:
                assert torch.equal(sa[part][key], sb[part][key]), f"{part}: {key}"
            else:
                torch.testing.assert_close(
                    sa[part][key], sb[part][key], rtol=1e-6, atol=1e-6, msg=f"{part}: {key}"
                )


# --------------------------------------------------------------------------- happy path


def test_official_layout_loads_every_component(official_root, loaded):
    c = loaded
    assert c.paths.layout == "official" and c.paths.dit == official_root / DIT
    assert c.paths.silence.name == "silence_latent.safetensors"
    assert c.config == AceStepConfig.tiny()
    assert c.variant.name == "turbo" and c.is_turbo and c.variant.defaults.num_steps == 8
    assert c.silence_latent.shape == (15000, c.config.audio_acoustic_hidden_dim)
    assert c.silence_latent.dtype == torch.float32
    assert c.dtype == c.vae_dtype == torch.float32 and c.device == torch.device("cpu")
    file_sd = convert.official_to_encore(load_file(str(official_root / DIT / "model.safetensors")))
    model_sd = c.model.state_dict()
    assert file_sd.keys() == model_sd.keys()
    assert all(torch.equal(file_sd[k], model_sd[k]) for k in file_sd)
    assert all(p.device.type == "cpu" for p in c.model.parameters())
    ids = c.text_tokenizer("hello world").input_ids
    assert ids[-1] == c.text_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    hidden = c.text_encoder.encode_caption(torch.tensor([ids]))
    assert hidden.shape == (1, len(ids), c.config.text_hidden_dim) and torch.isfinite(hidden).all()


def test_root_and_dit_folder_load_the_same_weights(official_root, loaded):
    paths = resolve_checkpoint(official_root)
    assert paths.dit == official_root / DIT and paths.vae == official_root / "vae"
    again = load_components(official_root, device="cpu", dtype="float32")
    _assert_same_state(loaded, again)


def test_bfloat16_load_casts_parameters(official_root):
    c = load_components(official_root / DIT, device="cpu", dtype=torch.bfloat16, vae_dtype="float32")
    assert {p.dtype for p in c.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in c.vae.parameters()} == {torch.float32}
    assert c.silence_latent.dtype == torch.float32


def test_random_checkpoint_is_deterministic(tmp_path):
    a = write_random_checkpoint(tmp_path / "a", seed=3)
    b = write_random_checkpoint(tmp_path / "b", seed=3)
    c = write_random_checkpoint(tmp_path / "c", seed=4)
    for rel in (
        "model.safetensors",
        "silence_latent.safetensors",
        "../vae/diffusion_pytorch_model.safetensors",
        "../Qwen3-Embedding-0.6B/model.safetensors",
    ):
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_silence_pt_is_used_when_no_safetensors(tree, loaded):
    (tree / DIT / "silence_latent.safetensors").unlink()
    c = load_components(tree / DIT, device="cpu", dtype="float32")
    assert c.paths.silence.name == "silence_latent.pt"
    assert torch.equal(c.silence_latent, loaded.silence_latent)


def test_silence_safetensors_is_preferred(tree):
    save_file(
        {"silence_latent": torch.full((1, 64, 9), 0.25)}, str(tree / DIT / "silence_latent.safetensors")
    )
    c = load_components(tree / DIT, device="cpu", dtype="float32")
    assert c.silence_latent.shape == (9, 64) and bool((c.silence_latent == 0.25).all())


def test_loading_never_unpickles(tree, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the unpickler was used during loading")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    (tree / DIT / "silence_latent.safetensors").unlink()  # exercise the .pt reader too
    c = load_components(tree / DIT, device="cpu", dtype="float32")
    assert c.paths.silence.name == "silence_latent.pt"


def test_several_dit_folders_need_a_variant(tree):
    shutil.copytree(tree / DIT, tree / "acestep-v15-base")
    assert resolve_checkpoint(tree).dit.name == DIT  # official default
    assert resolve_checkpoint(tree, variant="base").dit.name == "acestep-v15-base"
    shutil.rmtree(tree / DIT)
    shutil.copytree(tree / "acestep-v15-base", tree / "acestep-v15-sft")
    with pytest.raises(CheckpointError, match="several DiT folders"):
        resolve_checkpoint(tree)


def test_preset_name_resolves_under_checkpoint_root(official_root, tmp_path):
    assert resolve_checkpoint("turbo", checkpoint_root=official_root).dit == official_root / DIT
    with pytest.raises(CheckpointError, match="encore download base"):
        resolve_checkpoint("base", checkpoint_root=official_root)
    with pytest.raises(CheckpointError, match="not found"):
        resolve_checkpoint(tmp_path / "nothing-here")


def test_load_pipeline_wraps_components_or_says_why_not(official_root):
    import importlib.util

    if importlib.util.find_spec("encore.pipeline.pipeline") is None:
        with pytest.raises(RuntimeError, match="Pipeline is not available"):
            load_pipeline(official_root / DIT, device="cpu", dtype="float32")
    else:
        assert load_pipeline(official_root / DIT, device="cpu", dtype="float32") is not None


# --------------------------------------------------------------------------- corrupt trees


def _rewrite(path: Path, edit) -> None:
    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))


def _first_key(path: Path, contains: str) -> str:
    return next(k for k in sorted(load_file(str(path))) if contains in k)


def _corrupt(tree: Path, kind: str) -> tuple[Path, str | None]:
    """Applies one corruption; returns (file the error must name, tensor it must name or None)."""
    dit, model = tree / DIT, tree / DIT / "model.safetensors"
    if kind == "missing model file":
        model.unlink()
        return model, None
    if kind == "truncated model file":
        model.write_bytes(model.read_bytes()[:-100])
        return model, None
    if kind == "bad header JSON":
        data = bytearray(model.read_bytes())
        data[8:9] = b"["
        model.write_bytes(bytes(data))
        return model, None
    if kind == "missing tensor":
        _rewrite(model, lambda sd: sd.pop("decoder.proj_in.1.weight"))
        return model, "decoder.proj_in.1.weight"
    if kind == "unexpected tensor":
        _rewrite(model, lambda sd: sd.update({"decoder.extra.weight": torch.zeros(2)}))
        return model, "decoder.extra.weight"
    if kind == "duplicate tensor":
        _rewrite(
            model, lambda sd: sd.update({"decoder.proj_out.weight": sd["decoder.proj_out.1.weight"].clone()})
        )
        return model, "decoder.proj_out.weight"
    if kind == "wrong shape":
        key = _first_key(model, "cross_attn.k_proj.weight")
        _rewrite(model, lambda sd: sd.update({key: torch.zeros(3, 3)}))
        return model, key
    if kind == "int dtype":
        _rewrite(
            model,
            lambda sd: sd.update(
                {"null_condition_emb": torch.zeros_like(sd["null_condition_emb"], dtype=torch.int32)}
            ),
        )
        return model, "null_condition_emb"
    if kind == "NaN weights":
        _rewrite(model, lambda sd: sd["decoder.norm_out.weight"].fill_(float("nan")))
        return model, "decoder.norm_out.weight"
    if kind == "missing config":
        (dit / "config.json").unlink()
        return dit / "config.json", None
    if kind == "unknown config key":
        cfg = json.loads((dit / "config.json").read_text())
        cfg["hiden_size"] = 7
        (dit / "config.json").write_text(json.dumps(cfg))
        return dit / "config.json", None
    if kind == "wrong silence shape":
        save_file({"silence_latent": torch.zeros(1, 32, 10)}, str(dit / "silence_latent.safetensors"))
        return dit / "silence_latent.safetensors", "silence_latent"
    if kind == "silence pt wrong shape":
        (dit / "silence_latent.safetensors").unlink()
        torch.save(torch.zeros(1, 10, 64), dit / "silence_latent.pt")
        return dit / "silence_latent.pt", "silence_latent"
    if kind == "missing vae weight-norm half":
        vae = tree / "vae" / "diffusion_pytorch_model.safetensors"
        _rewrite(vae, lambda sd: sd.pop("decoder.conv1.weight_v"))
        return vae, None
    if kind == "missing vae config":
        (tree / "vae" / "config.json").unlink()
        return tree / "vae" / "config.json", None
    if kind == "text encoder wrong shape":
        text = tree / "Qwen3-Embedding-0.6B" / "model.safetensors"
        _rewrite(text, lambda sd: sd.update({"norm.weight": torch.ones(5)}))
        return text, "norm.weight"
    raise AssertionError(kind)


CORRUPT_KINDS = [
    "missing model file",
    "truncated model file",
    "bad header JSON",
    "missing tensor",
    "unexpected tensor",
    "duplicate tensor",
    "wrong shape",
    "int dtype",
    "NaN weights",
    "missing config",
    "unknown config key",
    "wrong silence shape",
    "silence pt wrong shape",
    "missing vae weight-norm half",
    "missing vae config",
    "text encoder wrong shape",
]


@pytest.mark.parametrize("kind", CORRUPT_KINDS)
def test_corrupt_checkpoint_is_refused_naming_file_and_tensor(tree, kind):
    path, tensor = _corrupt(tree, kind)
    with pytest.raises(CheckpointError) as info:
        load_components(tree / DIT, device="cpu", dtype="float32")
    assert Path(info.value.path) == path, str(info.value)
    if tensor is not None:
        assert info.value.tensor == tensor, str(info.value)
        assert tensor in str(info.value)


def test_malicious_silence_pt_never_runs(tree):
    class Payload:
        def __reduce__(self):
            return (open, (str(tree / "pwned"), "w"))

    (tree / DIT / "silence_latent.safetensors").unlink()
    torch.save(Payload(), tree / DIT / "silence_latent.pt")
    with pytest.raises(CheckpointError) as info:
        load_components(tree / DIT, device="cpu", dtype="float32")
    assert info.value.path == str(tree / DIT / "silence_latent.pt")
    assert not (tree / "pwned").exists()


# --------------------------------------------------------------------------- round trips


def test_official_round_trip_is_bit_exact(official_root, loaded, tmp_path):
    out = save_components(loaded, tmp_path / "export")
    assert out == tmp_path / "export" / DIT
    for rel in (
        "model.safetensors",
        "silence_latent.safetensors",
        "../Qwen3-Embedding-0.6B/model.safetensors",
    ):
        a, b = load_file(str(official_root / DIT / rel)), load_file(str(out / rel))
        assert a.keys() == b.keys(), rel
        assert all(torch.equal(a[k], b[k]) for k in a), rel
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (official_root / DIT / "config.json").read_text()
    )
    reloaded = load_components(out, device="cpu", dtype="float32")
    _assert_same_state(
        loaded, reloaded, exact=False
    )  # VAE weights are re-split into (g, v): float32 rounding
    assert torch.equal(reloaded.silence_latent, loaded.silence_latent)
    assert all(torch.equal(v, loaded.model.state_dict()[k]) for k, v in reloaded.model.state_dict().items())


def test_bfloat16_export_of_bfloat16_file_is_identical(tmp_path):
    src = write_random_checkpoint(tmp_path / "src")
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(src / "model.safetensors"))
    c = load_components(src, device="cpu", dtype="float32")
    out = save_components(c, tmp_path / "out", dtype=torch.bfloat16)
    a, b = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


def test_our_diffusers_writer_loads_the_same_weights(loaded, tmp_path):
    out = write_random_checkpoint(tmp_path / "diff", seed=0, layout="diffusers")
    c = load_components(out, device="cpu", dtype="float32")
    assert c.paths.layout == "diffusers"
    assert c.config == loaded.config and c.variant.is_turbo
    _assert_same_state(loaded, c)


def test_diffusers_export_round_trip(loaded, tmp_path):
    out = save_components(loaded, tmp_path / "diff", layout="diffusers")
    c = load_components(out, device="cpu", dtype="float32")
    _assert_same_state(loaded, c, exact=False)


def test_diffusers_missing_tensor_names_component_file(loaded, tmp_path):
    out = save_components(loaded, tmp_path / "diff", layout="diffusers")
    path = out / "audio_tokenizer" / "diffusion_pytorch_model.safetensors"
    _rewrite(path, lambda sd: sd.pop("quantizer.project_in.bias"))
    with pytest.raises(CheckpointError) as info:
        load_components(out, device="cpu", dtype="float32")
    assert info.value.path == str(path) and info.value.tensor == "quantizer.project_in.bias"


def _diffusers_pipeline_from(official_root: Path, loaded: Components):
    """Builds diffusers' own AceStepPipeline from the random official files (weights via convert.py)."""
    import inspect

    from diffusers import AceStepPipeline, AutoencoderOobleck, FlowMatchEulerDiscreteScheduler
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step.modeling_ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )

    def build(cls, cfg):
        return cls(**{k: v for k, v in cfg.items() if k in inspect.signature(cls).parameters})

    cfgs = convert.config_to_diffusers(loaded.config)
    official = load_file(str(official_root / DIT / "model.safetensors"))
    parts = convert.official_to_diffusers(official, silence_latent=loaded.silence_latent)
    classes = {
        "transformer": AceStepTransformer1DModel,
        "condition_encoder": AceStepConditionEncoder,
        "audio_tokenizer": AceStepAudioTokenizer,
        "audio_token_detokenizer": AceStepAudioTokenDetokenizer,
    }
    modules = {}
    for name, cls in classes.items():
        modules[name] = build(cls, cfgs[name])
        modules[name].load_state_dict(parts[name], strict=True)
    vae = build(AutoencoderOobleck, json.loads((official_root / "vae" / "config.json").read_text()))
    vae.load_state_dict(
        load_file(str(official_root / "vae" / "diffusion_pytorch_model.safetensors")), strict=True
    )
    return AceStepPipeline(
        vae=vae,
        text_encoder=loaded.text_encoder.model,
        tokenizer=loaded.text_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1, shift=1.0),
        **modules,
    )


@pytest.mark.parity
def test_diffusers_saved_pipeline_loads_into_the_same_weights(official_root, loaded, tmp_path):
    pipe = _diffusers_pipeline_from(official_root, loaded)
    pipe.save_pretrained(str(tmp_path / "pipe"))
    c = load_components(tmp_path / "pipe", device="cpu", dtype="float32")
    assert c.paths.layout == "diffusers"
    assert c.config == AceStepConfig.tiny(timbre_fix_frame=c.config.timbre_fix_frame)
    _assert_same_state(loaded, c, exact=False)


@pytest.mark.parity
@pytest.mark.parametrize("writer", ["save_components", "write_random_checkpoint"])
def test_diffusers_reads_our_diffusers_layout(loaded, tmp_path, writer):
    from diffusers import AceStepPipeline

    if writer == "save_components":
        out = save_components(loaded, tmp_path / "diff", layout="diffusers")
    else:
        out = write_random_checkpoint(tmp_path / "diff", seed=0, layout="diffusers")
    pipe = AceStepPipeline.from_pretrained(str(out))
    assert pipe.is_turbo
    ids = pipe.tokenizer("hello").input_ids
    assert ids == loaded.text_tokenizer("hello").input_ids
    ours = convert.official_to_diffusers(
        convert.encore_to_official(loaded.model.state_dict()), silence_latent=loaded.silence_latent
    )
    for name, sd in ours.items():
        theirs = getattr(pipe, name).state_dict()
        assert theirs.keys() == sd.keys(), name
        assert all(torch.equal(theirs[k], sd[k]) for k in sd), name


def test_text_encoder_saved_from_causal_lm_loads(tree, loaded):
    text = tree / "Qwen3-Embedding-0.6B" / "model.safetensors"
    sd = load_file(str(text))
    prefixed = {f"model.{k}": v for k, v in sd.items()}
    prefixed["lm_head.weight"] = torch.zeros_like(sd["embed_tokens.weight"])
    save_file(prefixed, str(text))
    c = load_components(tree / DIT, device="cpu", dtype="float32")
    assert all(torch.equal(v, sd[k]) for k, v in c.text_encoder.model.state_dict().items())
    del prefixed["model.norm.weight"]
    save_file(prefixed, str(text))
    with pytest.raises(CheckpointError) as info:
        load_components(tree / DIT, device="cpu", dtype="float32")
    assert info.value.tensor == "model.norm.weight" and info.value.path == str(text)


def test_convert_checkpoint_keeps_stored_dtype(tmp_path):
    from encore.pipeline.saving import convert_checkpoint

    src = write_random_checkpoint(tmp_path / "src")
    sd = load_file(str(src / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16) for k, v in sd.items()}, str(src / "model.safetensors"))
    diff = convert_checkpoint(src, tmp_path / "diff", layout="diffusers")
    assert (
        load_file(str(diff / "transformer" / "diffusion_pytorch_model.safetensors"))[
            "proj_in_conv.weight"
        ].dtype
        == torch.bfloat16
    )
    back = convert_checkpoint(diff, tmp_path / "back", layout="official")
    a, b = load_file(str(src / "model.safetensors")), load_file(str(back / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
