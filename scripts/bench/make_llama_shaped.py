#!/usr/bin/env python3
"""Random-weight LLaMA-13B-shaped HF folders with few layers, for per-layer timing against llama.cpp.

    make_llama_shaped.py --layers 2 --out DIR [--vision-out VDIR]

DIR gets config.json (model_type llama, hidden 5120, intermediate 13824, 40 heads, vocab 39424,
max_position_embeddings 2048), model.safetensors in float16 (as Ziya-LLaMA-13B is stored) and the
project's tiny sentencepiece tokenizer (assets/tiny-ziya/llm, 1000 pieces). llama.cpp's
convert_hf_to_gguf.py pads a smaller sentencepiece vocabulary up to vocab_size with [PADn] tokens,
so the GGUF has the real 39424-row embedding and output head.

VDIR (optional) gets a tiny random Ziya-BLIP2 vision folder whose Q-Former is 768 wide, with a
language_projection 768 -> 5120, so `ziya-visual ask` accepts the pair. Tensor names follow
src/model/shapes.rs (2023 layout: q_bias/v_bias, no Q-Former text embeddings).

Values are N(0, 0.02) (norms 1): meaningless, only the shapes and formats matter for timing.
"""
import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "assets" / "tiny-ziya" / "llm"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

HIDDEN, INTERMEDIATE, HEADS, VOCAB, CONTEXT = 5120, 13824, 40, 39424, 2048


def llm_config(layers):
    return {
        "_comment": "RANDOM weights, LLaMA-13B shapes with few layers: for benchmarks only.",
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB,
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": layers,
        "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "max_position_embeddings": CONTEXT,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu", "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False, "torch_dtype": "float16",
    }


class Values:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, std, dtype):
        return (self.rng.standard_normal(shape, dtype=np.float32) * std).astype(dtype)


def write_llm(out: Path, layers: int, seed: int):
    out.mkdir(parents=True, exist_ok=True)
    v, f16 = Values(seed), np.float16
    t = {"model.embed_tokens.weight": v.normal((VOCAB, HIDDEN), 0.02, f16)}
    for i in range(layers):
        p = f"model.layers.{i}"
        for name, shape in [("self_attn.q_proj", (HIDDEN, HIDDEN)), ("self_attn.k_proj", (HIDDEN, HIDDEN)),
                            ("self_attn.v_proj", (HIDDEN, HIDDEN)), ("self_attn.o_proj", (HIDDEN, HIDDEN)),
                            ("mlp.gate_proj", (INTERMEDIATE, HIDDEN)), ("mlp.up_proj", (INTERMEDIATE, HIDDEN)),
                            ("mlp.down_proj", (HIDDEN, INTERMEDIATE))]:
            t[f"{p}.{name}.weight"] = v.normal(shape, 0.02, f16)
        t[f"{p}.input_layernorm.weight"] = np.ones(HIDDEN, f16)
        t[f"{p}.post_attention_layernorm.weight"] = np.ones(HIDDEN, f16)
    t["model.norm.weight"] = np.ones(HIDDEN, f16)
    t["lm_head.weight"] = v.normal((VOCAB, HIDDEN), 0.02, f16)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(llm_config(layers), indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}) + "\n")
    for f in TOKENIZER_FILES:
        shutil.copy(TOKENIZER_DIR / f, out / f)


# A tiny tower (64 wide, 1 layer) and a 768-wide 2-layer Q-Former (one cross-attention layer).
VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=1, num_attention_heads=4,
              image_size=224, patch_size=14, layer_norm_eps=1e-6, qkv_bias=True, hidden_act="gelu")
QFORMER = dict(hidden_size=768, intermediate_size=768, num_hidden_layers=2, num_attention_heads=12,
               encoder_hidden_size=64, cross_attention_frequency=2, layer_norm_eps=1e-12, hidden_act="gelu")
NUM_QUERY_TOKENS = 32


def vision_tensors():
    """Names and shapes as src/model/shapes.rs vision_tensors + projection_tensors."""
    d, i, p = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"]
    positions = (VISION["image_size"] // p) ** 2 + 1
    t = [("vision_model.embeddings.class_embedding", (1, 1, d)),
         ("vision_model.embeddings.position_embedding", (1, positions, d)),
         ("vision_model.embeddings.patch_embedding.weight", (d, 3, p, p)),
         ("vision_model.embeddings.patch_embedding.bias", (d,))]
    for l in range(VISION["num_hidden_layers"]):
        pre = f"vision_model.encoder.layers.{l}"
        t += [(f"{pre}.self_attn.qkv.weight", (3 * d, d)), (f"{pre}.self_attn.q_bias", (d,)),
              (f"{pre}.self_attn.v_bias", (d,)), (f"{pre}.self_attn.projection.weight", (d, d)),
              (f"{pre}.self_attn.projection.bias", (d,))]
        for n in ("layer_norm1", "layer_norm2"):
            t += [(f"{pre}.{n}.weight", (d,)), (f"{pre}.{n}.bias", (d,))]
        t += [(f"{pre}.mlp.fc1.weight", (i, d)), (f"{pre}.mlp.fc1.bias", (i,)),
              (f"{pre}.mlp.fc2.weight", (d, i)), (f"{pre}.mlp.fc2.bias", (d,))]
    t += [("vision_model.post_layernorm.weight", (d,)), ("vision_model.post_layernorm.bias", (d,))]
    h, qi = QFORMER["hidden_size"], QFORMER["intermediate_size"]
    t += [("query_tokens", (1, NUM_QUERY_TOKENS, h)), ("qformer.layernorm.weight", (h,)),
          ("qformer.layernorm.bias", (h,))]
    for l in range(QFORMER["num_hidden_layers"]):
        pre = f"qformer.encoder.layer.{l}"
        blocks = [("attention", h)]
        if l % QFORMER["cross_attention_frequency"] == 0:
            blocks.append(("crossattention", QFORMER["encoder_hidden_size"]))
        for name, kv in blocks:
            for part in ("query", "key", "value"):
                t += [(f"{pre}.{name}.attention.{part}.weight", (h, h if part == "query" else kv)),
                      (f"{pre}.{name}.attention.{part}.bias", (h,))]
            t += [(f"{pre}.{name}.output.dense.weight", (h, h)), (f"{pre}.{name}.output.dense.bias", (h,)),
                  (f"{pre}.{name}.output.LayerNorm.weight", (h,)), (f"{pre}.{name}.output.LayerNorm.bias", (h,))]
        t += [(f"{pre}.intermediate_query.dense.weight", (qi, h)), (f"{pre}.intermediate_query.dense.bias", (qi,)),
              (f"{pre}.output_query.dense.weight", (h, qi)), (f"{pre}.output_query.dense.bias", (h,)),
              (f"{pre}.output_query.LayerNorm.weight", (h,)), (f"{pre}.output_query.LayerNorm.bias", (h,))]
    t += [("language_projection.weight", (HIDDEN, h)), ("language_projection.bias", (HIDDEN,))]
    return t


def write_vision(out: Path, seed: int):
    out.mkdir(parents=True, exist_ok=True)
    v, f32 = Values(seed), np.float32
    tensors = {}
    for name, shape in vision_tensors():
        is_norm = "norm" in name.lower()
        if is_norm and name.endswith("weight"):
            tensors[name] = np.ones(shape, f32)
        elif is_norm or name.endswith("bias"):
            tensors[name] = np.zeros(shape, f32) if is_norm else v.normal(shape, 0.01, f32)
        else:
            tensors[name] = v.normal(shape, 0.02, f32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "_comment": "RANDOM tiny vision folder whose projection maps 768 -> 5120 (13B-shaped LLM): benchmarks only.",
        "architectures": ["ZiyaBlip2ForCausalLM"], "model_type": "blip-2", "num_query_tokens": NUM_QUERY_TOKENS,
        "human_name": "<human>", "assistant_name": "<bot>", "prompt_prefix": "",
        "vision_config": VISION, "qformer_config": QFORMER,
        "text_config": {"model_type": "llama", "hidden_size": HIDDEN},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vision-out", type=Path)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    write_llm(a.out, a.layers, a.seed)
    if a.vision_out:
        write_vision(a.vision_out, a.seed + 100)
    print(a.out)


if __name__ == "__main__":
    main()
