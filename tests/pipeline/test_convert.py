"""Key maps, silence layouts, VAE weight-norm folding and config mapping in `encore.pipeline.convert`."""

from __future__ import annotations

import inspect

import pytest
import torch

from encore.models.config import AceStepConfig
from encore.pipeline import convert

diffusers = pytest.importorskip("diffusers")


def test_official_encore_conv_rename_round_trip():
    official = {
        "decoder.proj_in.1.weight": 1,
        "decoder.proj_in.1.bias": 2,
        "decoder.proj_out.1.weight": 3,
        "decoder.proj_out.1.bias": 4,
        "decoder.layers.0.self_attn.q_proj.weight": 5,
        "null_condition_emb": 6,
        "encoder.lyric_encoder.layers.1.mlp.up_proj.weight": 7,
    }
    ours = convert.official_to_encore(official)
    assert set(ours) == {
        "decoder.proj_in.weight",
        "decoder.proj_in.bias",
        "decoder.proj_out.weight",
        "decoder.proj_out.bias",
        "decoder.layers.0.self_attn.q_proj.weight",
        "null_condition_emb",
        "encoder.lyric_encoder.layers.1.mlp.up_proj.weight",
    }
    assert ours["decoder.proj_out.weight"] == 3
    assert convert.encore_to_official(ours) == official


def test_rename_refuses_collisions():
    with pytest.raises(ValueError, match="already present"):
        convert.official_to_encore({"decoder.proj_in.1.weight": 1, "decoder.proj_in.weight": 2})


@pytest.mark.parametrize(
    ("official", "component", "key"),
    [
        ("decoder.proj_in.1.weight", "transformer", "proj_in_conv.weight"),
        ("decoder.proj_out.1.bias", "transformer", "proj_out_conv.bias"),
        ("decoder.layers.3.cross_attn.o_proj.weight", "transformer", "layers.3.cross_attn.to_out.0.weight"),
        ("decoder.layers.0.self_attn.k_norm.weight", "transformer", "layers.0.self_attn.norm_k.weight"),
        ("decoder.time_embed_r.time_proj.bias", "transformer", "time_embed_r.time_proj.bias"),
        (
            "encoder.lyric_encoder.layers.2.self_attn.v_proj.weight",
            "condition_encoder",
            "lyric_encoder.layers.2.self_attn.to_v.weight",
        ),
        ("null_condition_emb", "condition_encoder", "null_condition_emb"),
        (
            "tokenizer.attention_pooler.layers.1.self_attn.q_norm.weight",
            "audio_tokenizer",
            "attention_pooler.layers.1.self_attn.norm_q.weight",
        ),
        ("detokenizer.proj_out.weight", "audio_token_detokenizer", "proj_out.weight"),
        ("detokenizer.special_tokens", "audio_token_detokenizer", "special_tokens"),
    ],
)
def test_official_diffusers_key_map(official, component, key):
    assert convert.official_key_to_diffusers(official) == (component, key)
    assert convert.diffusers_key_to_official(component, key) == official


def test_unknown_prefix_and_component_are_refused():
    with pytest.raises(ValueError, match="no diffusers counterpart"):
        convert.official_key_to_diffusers("lm_head.weight")
    with pytest.raises(ValueError, match="unknown diffusers component"):
        convert.diffusers_key_to_official("vae", "x")


def _tiny_diffusers_parts(config: AceStepConfig) -> dict[str, torch.nn.Module]:
    from diffusers.models.transformers.ace_step_transformer import AceStepTransformer1DModel
    from diffusers.pipelines.ace_step.modeling_ace_step import (
        AceStepAudioTokenDetokenizer,
        AceStepAudioTokenizer,
        AceStepConditionEncoder,
    )

    cfgs = convert.config_to_diffusers(config)
    classes = {
        "transformer": AceStepTransformer1DModel,
        "condition_encoder": AceStepConditionEncoder,
        "audio_tokenizer": AceStepAudioTokenizer,
        "audio_token_detokenizer": AceStepAudioTokenDetokenizer,
    }
    return {
        name: cls(**{k: v for k, v in cfgs[name].items() if k in inspect.signature(cls).parameters})
        for name, cls in classes.items()
    }


@pytest.mark.parity
def test_every_diffusers_key_round_trips_through_official_names():
    parts = _tiny_diffusers_parts(AceStepConfig.tiny())
    official: dict[str, torch.Size] = {}
    for component, module in parts.items():
        sd = {k: v.shape for k, v in module.state_dict().items()}
        mapped = convert.diffusers_to_official(component, sd)
        assert len(mapped) == len(sd) - (component == "condition_encoder")  # silence buffer is skipped
        official.update(mapped)
    back = convert.official_to_diffusers(official)
    for component, module in parts.items():
        expected = {k: v.shape for k, v in module.state_dict().items() if k != convert.DIFFUSERS_SILENCE_KEY}
        assert back[component] == expected


def test_silence_layouts():
    official = torch.arange(2 * 64 * 5, dtype=torch.float32).reshape(1, 64, 10)[:, :, ::2]
    ours = convert.silence_from_official(official)
    assert ours.shape == (5, 64) and ours.is_contiguous()
    assert torch.equal(ours[3], official[0, :, 3])
    assert torch.equal(convert.silence_to_official(ours), official)
    diff = convert.silence_to_diffusers(ours)
    assert diff.shape == (1, 5, 64)
    assert torch.equal(convert.silence_from_diffusers(diff), ours)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(64, 5),
        torch.zeros(1, 32, 5),
        torch.zeros(2, 64, 5),
        torch.zeros(1, 64, 0),
        torch.zeros(1, 64, 5, dtype=torch.int64),
    ],
)
def test_silence_layout_rejects_bad_tensors(bad):
    with pytest.raises(ValueError, match="silence latent"):
        convert.silence_from_official(bad)


def _tiny_oobleck():
    from diffusers import AutoencoderOobleck

    return AutoencoderOobleck(
        encoder_hidden_size=4,
        downsampling_ratios=[2, 3],
        channel_multiples=[1, 2],
        decoder_channels=4,
        decoder_input_channels=3,
        audio_channels=2,
    )


@pytest.mark.parity
def test_fold_matches_diffusers_effective_weights():
    vae = _tiny_oobleck()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) + (2.0 if name.endswith("weight_g") else 0.0))
    sd = vae.state_dict()
    assert any(k.endswith("weight_g") for k in sd)
    folded = convert.fold_vae_weight_norm(sd)
    assert not any(k.endswith(("weight_g", "weight_v")) for k in folded)
    checked = 0
    for name, module in vae.named_modules():
        if hasattr(module, "weight_g"):
            # torch recomputes `weight` from (g, v) in a pre-forward hook; do the same explicitly.
            effective = torch._weight_norm(module.weight_v, module.weight_g, 0)
            torch.testing.assert_close(folded[f"{name}.weight"], effective, rtol=1e-6, atol=1e-6)
            checked += 1
    assert checked == sum(k.endswith("weight_g") for k in sd)
    assert torch.equal(
        folded["encoder.block.0.res_unit1.snake1.alpha"], sd["encoder.block.0.res_unit1.snake1.alpha"]
    )


def test_unfold_then_fold_is_identity_and_parametrizations_names_fold_too():
    g = torch.Generator().manual_seed(2)
    plain = {
        "dec.conv_t1.weight": torch.randn(6, 4, 5, generator=g),
        "dec.conv_t1.bias": torch.randn(4, generator=g),
        "dec.snake1.alpha": torch.randn(1, 6, 1, generator=g),
    }
    pairs = convert.unfold_vae_weight_norm(plain)
    assert set(pairs) == {
        "dec.conv_t1.weight_g",
        "dec.conv_t1.weight_v",
        "dec.conv_t1.bias",
        "dec.snake1.alpha",
    }
    assert pairs["dec.conv_t1.weight_g"].shape == (6, 1, 1)
    torch.testing.assert_close(
        convert.fold_vae_weight_norm(pairs)["dec.conv_t1.weight"], plain["dec.conv_t1.weight"]
    )
    param_names = {
        "c.parametrizations.weight.original0": pairs["dec.conv_t1.weight_g"],
        "c.parametrizations.weight.original1": 3 * pairs["dec.conv_t1.weight_v"],
    }
    torch.testing.assert_close(
        convert.fold_vae_weight_norm(param_names)["c.weight"], plain["dec.conv_t1.weight"]
    )


@pytest.mark.parametrize(
    "sd",
    [
        {"a.weight_g": torch.ones(2, 1, 1)},
        {"a.weight_v": torch.ones(2, 3, 1)},
        {"a.weight_g": torch.ones(3, 1, 1), "a.weight_v": torch.ones(2, 3, 1)},
        {"a.weight_g": torch.ones(2, 1, 1, dtype=torch.int32), "a.weight_v": torch.ones(2, 3, 1)},
        {
            "a.weight_g": torch.ones(2, 1, 1),
            "a.weight_v": torch.ones(2, 3, 1),
            "a.weight": torch.ones(2, 3, 1),
        },
    ],
)
def test_fold_rejects_broken_pairs(sd):
    with pytest.raises(ValueError, match="a.weight"):
        convert.fold_vae_weight_norm(sd)


@pytest.mark.parametrize(
    "config",
    [
        AceStepConfig.tiny(),
        AceStepConfig.tiny(is_turbo=False, model_version="base"),
        AceStepConfig.xl(),
        AceStepConfig(),
        AceStepConfig.tiny(beat_hints=True),
        AceStepConfig.tiny(beat_hints=True, key_hints=True),
        AceStepConfig.tiny(beat_hints=True, key_hints=True, instrument_hints=True),
    ],
)
def test_config_diffusers_round_trip(config):
    cfgs = convert.config_to_diffusers(config)
    back = convert.config_from_diffusers(
        cfgs["transformer"], cfgs["condition_encoder"], cfgs["audio_tokenizer"]
    )
    assert back == config


def test_config_from_diffusers_derives_timbre_window_and_reports_missing_fields():
    cfgs = convert.config_to_diffusers(AceStepConfig.tiny())
    del cfgs["condition_encoder"]["timbre_fix_frame"]  # as written by diffusers itself
    back = convert.config_from_diffusers(
        cfgs["transformer"], cfgs["condition_encoder"], latents_per_second=25.0
    )
    assert back.timbre_fix_frame == 750
    del cfgs["transformer"]["num_hidden_layers"]
    with pytest.raises(ValueError, match="transformer/config.json: missing 'num_hidden_layers'"):
        convert.config_from_diffusers(cfgs["transformer"], cfgs["condition_encoder"])
