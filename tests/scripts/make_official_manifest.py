"""Writes the official `model.safetensors` key -> shape manifests for tests/pipeline/test_convert_manifest.py.

The key list is derived from the rules written in SPEC.md §2 (module tree, attention/MLP blocks, shapes)
and §1.1/§1.2 (2B and XL geometry) — NOT from Encore's model — so the manifest test can catch a model
that drifts from the official checkpoint. Usage:

    python tests/scripts/make_official_manifest.py            # rewrites tests/data/official_keys_{2b,xl}.json
"""

from __future__ import annotations

import json
from pathlib import Path

Shape = list[int]

# SPEC §1.1 (2B) and §1.2 (XL): decoder geometry, encoder geometry, fixed dims.
GEOMETRY = {
    "2b": {
        "dec_hidden": 2048,
        "dec_ffn": 6144,
        "dec_layers": 24,
        "dec_heads": 16,
        "dec_kv": 8,
        "enc_hidden": 2048,
        "enc_ffn": 6144,
        "enc_heads": 16,
        "enc_kv": 8,
    },
    "xl": {
        "dec_hidden": 2560,
        "dec_ffn": 9728,
        "dec_layers": 32,
        "dec_heads": 32,
        "dec_kv": 8,
        "enc_hidden": 2048,
        "enc_ffn": 6144,
        "enc_heads": 16,
        "enc_kv": 8,
    },
}
HEAD_DIM = 128
IN_CHANNELS = 192
LATENT_DIM = 64
PATCH = 2
TEXT_DIM = 1024
TIMBRE_DIM = 64
TIME_SINUSOID = 256
LYRIC_LAYERS = 8
TIMBRE_LAYERS = 4
POOLER_LAYERS = 2
POOL_WINDOW = 5
FSQ_DIM = 2048
FSQ_LEVELS = 6  # [8, 8, 8, 5, 5, 5]


def attention(prefix: str, hidden: int, heads: int, kv: int) -> dict[str, Shape]:
    """SPEC §2 'Shared attention block': q/k/v/o projections without bias, per-head q/k RMSNorm."""
    return {
        f"{prefix}.q_proj.weight": [heads * HEAD_DIM, hidden],
        f"{prefix}.k_proj.weight": [kv * HEAD_DIM, hidden],
        f"{prefix}.v_proj.weight": [kv * HEAD_DIM, hidden],
        f"{prefix}.o_proj.weight": [hidden, heads * HEAD_DIM],
        f"{prefix}.q_norm.weight": [HEAD_DIM],
        f"{prefix}.k_norm.weight": [HEAD_DIM],
    }


def mlp(prefix: str, hidden: int, ffn: int) -> dict[str, Shape]:
    """SPEC §2 'MLP': SwiGLU without biases."""
    return {
        f"{prefix}.gate_proj.weight": [ffn, hidden],
        f"{prefix}.up_proj.weight": [ffn, hidden],
        f"{prefix}.down_proj.weight": [hidden, ffn],
    }


def encoder_layer(prefix: str, hidden: int, ffn: int, heads: int, kv: int) -> dict[str, Shape]:
    """Pre-LN encoder layer (SPEC §3): input_layernorm, self_attn, post_attention_layernorm, mlp."""
    out = {
        f"{prefix}.input_layernorm.weight": [hidden],
        f"{prefix}.post_attention_layernorm.weight": [hidden],
    }
    out.update(attention(f"{prefix}.self_attn", hidden, heads, kv))
    out.update(mlp(f"{prefix}.mlp", hidden, ffn))
    return out


def time_embed(prefix: str, hidden: int) -> dict[str, Shape]:
    return {
        f"{prefix}.linear_1.weight": [hidden, TIME_SINUSOID],
        f"{prefix}.linear_1.bias": [hidden],
        f"{prefix}.linear_2.weight": [hidden, hidden],
        f"{prefix}.linear_2.bias": [hidden],
        f"{prefix}.time_proj.weight": [6 * hidden, hidden],
        f"{prefix}.time_proj.bias": [6 * hidden],
    }


def decoder(g: dict[str, int]) -> dict[str, Shape]:
    h = g["dec_hidden"]
    out: dict[str, Shape] = {
        "decoder.proj_in.1.weight": [h, IN_CHANNELS, PATCH],
        "decoder.proj_in.1.bias": [h],
        # ConvTranspose1d weight layout [in, out, k].
        "decoder.proj_out.1.weight": [h, LATENT_DIM, PATCH],
        "decoder.proj_out.1.bias": [LATENT_DIM],
        "decoder.condition_embedder.weight": [h, g["enc_hidden"]],
        "decoder.condition_embedder.bias": [h],
        "decoder.norm_out.weight": [h],
        "decoder.scale_shift_table": [1, 2, h],
    }
    out.update(time_embed("decoder.time_embed", h))
    out.update(time_embed("decoder.time_embed_r", h))
    for i in range(g["dec_layers"]):
        p = f"decoder.layers.{i}"
        out[f"{p}.self_attn_norm.weight"] = [h]
        out[f"{p}.cross_attn_norm.weight"] = [h]
        out[f"{p}.mlp_norm.weight"] = [h]
        out[f"{p}.scale_shift_table"] = [1, 6, h]
        # Cross-attention reads encoder states after condition_embedder has projected them to the DiT width.
        out.update(attention(f"{p}.self_attn", h, g["dec_heads"], g["dec_kv"]))
        out.update(attention(f"{p}.cross_attn", h, g["dec_heads"], g["dec_kv"]))
        out.update(mlp(f"{p}.mlp", h, g["dec_ffn"]))
    return out


def encoder_side(g: dict[str, int]) -> dict[str, Shape]:
    h, f, heads, kv = g["enc_hidden"], g["enc_ffn"], g["enc_heads"], g["enc_kv"]
    out: dict[str, Shape] = {
        "encoder.text_projector.weight": [h, TEXT_DIM],
        "encoder.lyric_encoder.embed_tokens.weight": [h, TEXT_DIM],
        "encoder.lyric_encoder.embed_tokens.bias": [h],
        "encoder.lyric_encoder.norm.weight": [h],
        "encoder.timbre_encoder.embed_tokens.weight": [h, TIMBRE_DIM],
        "encoder.timbre_encoder.embed_tokens.bias": [h],
        "encoder.timbre_encoder.special_token": [1, 1, h],
        "encoder.timbre_encoder.norm.weight": [h],
        "tokenizer.audio_acoustic_proj.weight": [h, LATENT_DIM],
        "tokenizer.audio_acoustic_proj.bias": [h],
        "tokenizer.attention_pooler.embed_tokens.weight": [h, h],
        "tokenizer.attention_pooler.embed_tokens.bias": [h],
        "tokenizer.attention_pooler.special_token": [1, 1, h],
        "tokenizer.attention_pooler.norm.weight": [h],
        "tokenizer.quantizer.project_in.weight": [FSQ_LEVELS, FSQ_DIM],
        "tokenizer.quantizer.project_in.bias": [FSQ_LEVELS],
        "tokenizer.quantizer.project_out.weight": [FSQ_DIM, FSQ_LEVELS],
        "tokenizer.quantizer.project_out.bias": [FSQ_DIM],
        "detokenizer.embed_tokens.weight": [h, h],
        "detokenizer.embed_tokens.bias": [h],
        "detokenizer.special_tokens": [1, POOL_WINDOW, h],
        "detokenizer.norm.weight": [h],
        "detokenizer.proj_out.weight": [LATENT_DIM, h],
        "detokenizer.proj_out.bias": [LATENT_DIM],
        "null_condition_emb": [1, 1, h],
    }
    for prefix, n in (
        ("encoder.lyric_encoder", LYRIC_LAYERS),
        ("encoder.timbre_encoder", TIMBRE_LAYERS),
        ("tokenizer.attention_pooler", POOLER_LAYERS),
        ("detokenizer", POOLER_LAYERS),
    ):
        for i in range(n):
            out.update(encoder_layer(f"{prefix}.layers.{i}", h, f, heads, kv))
    return out


def manifest(name: str) -> dict[str, object]:
    g = GEOMETRY[name]
    tensors = {**decoder(g), **encoder_side(g)}
    return {
        "source": "SPEC.md §1.1/§1.2 geometry and §2 key rules",
        "variant": name,
        "num_tensors": len(tensors),
        "num_parameters": sum(_numel(s) for s in tensors.values()),
        "tensors": dict(sorted(tensors.items())),
    }


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _dumps(doc: dict[str, object]) -> str:
    # One tensor per line keeps diffs of the committed manifest readable.
    head = {k: v for k, v in doc.items() if k != "tensors"}
    lines = [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    tensors = doc["tensors"]
    assert isinstance(tensors, dict)
    body = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in tensors.items())
    return "{\n" + "\n".join(lines) + '\n  "tensors": {\n' + body + "\n  }\n}\n"


def main() -> None:
    out_dir = Path(__file__).resolve().parents[1] / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in GEOMETRY:
        path = out_dir / f"official_keys_{name}.json"
        path.write_text(_dumps(manifest(name)), encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
