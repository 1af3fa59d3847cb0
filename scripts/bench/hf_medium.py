#!/usr/bin/env python3
"""HF transformers side of scripts/bench-vs-hf.sh: times a Ziya-Visual model folder pair in torch.

    hf_medium.py --vision DIR --llm DIR --image FILE --prompt-tokens N --tokens 64 --threads 2

The model is built by tests/fixtures/make_fixtures.py's `Reference` (BLIP-2 vision + Q-Former +
projection + LlamaForCausalLM, eager attention), with its size constants replaced by the folders'
config.json, and the folders' weights loaded into it (2023 q_bias/v_bias joined back into qkv.bias).
Prints one JSON line: image_s (preprocessing + vision + Q-Former + projection), prefill_s (the
whole prompt: N positions, 32 of them the image), decode_s and tokens_per_s (greedy, one token at a
time with the KV cache; tokens - 1 forwards, as `ziya-visual ask` counts).
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Q-Former parts only text input uses (query tokens go through intermediate_query/output_query);
# the 2023 checkpoints and our random folders do not have them.
TEXT_PATH = re.compile(r"layer\.\d+\.(intermediate|output)\.")
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vision", type=Path, required=True)
    ap.add_argument("--llm", type=Path, required=True)
    ap.add_argument("--image", type=Path, required=True)
    ap.add_argument("--prompt-tokens", type=int, required=True)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    from safetensors.torch import load_file

    torch.set_num_threads(a.threads)
    import make_fixtures as mf

    t0 = time.perf_counter()
    vcfg = json.loads((a.vision / "config.json").read_text())
    lcfg = json.loads((a.llm / "config.json").read_text())
    keep = lambda d, keys: {k: d[k] for k in keys if k in d}
    mf.VISION = {**mf.VISION, **keep(vcfg["vision_config"], mf.VISION)}
    mf.QFORMER = {**mf.QFORMER, **keep(vcfg["qformer_config"], mf.QFORMER)}
    mf.LLM = {**mf.LLM, **keep(lcfg, mf.LLM)}
    mf.NUM_QUERY_TOKENS = vcfg.get("num_query_tokens", 32)
    ref = mf.Reference(lcfg["vocab_size"])

    # The folders' weights into the reference modules.
    vis = {}
    for f in sorted(a.vision.glob("*.safetensors")):
        vis.update(load_file(str(f)))
    d = mf.VISION["hidden_size"]
    for k in [k for k in vis if k.endswith("self_attn.q_bias")]:
        base = k[: -len("q_bias")]
        q, v = vis.pop(k), vis.pop(base + "v_bias")
        vis[base + "qkv.bias"] = torch.cat([q, torch.zeros(d, dtype=q.dtype), v])
    missing, used = [], {"query_tokens", "language_projection.weight", "language_projection.bias"}
    with torch.no_grad():
        for prefix, module in (("vision_model.", ref.vision), ("qformer.", ref.qformer)):
            for k, p in module.state_dict().items():
                if prefix + k in vis:
                    p.copy_(vis[prefix + k])
                    used.add(prefix + k)
                elif not k.startswith("embeddings.") and not TEXT_PATH.search(k):
                    missing.append(prefix + k)
        missing += [f"(unused) {k}" for k in vis if k not in used]
        ref.query_tokens.copy_(vis["query_tokens"])
        ref.proj.weight.copy_(vis["language_projection.weight"])
        ref.proj.bias.copy_(vis["language_projection.bias"])
        llm = {}
        for f in sorted(a.llm.glob("*.safetensors")):
            llm.update(load_file(str(f)))
        result = ref.lm.load_state_dict({k: t.float() for k, t in llm.items()}, strict=False)
        missing += [k for k in result.missing_keys if "rotary" not in k]
    if missing:
        raise SystemExit(f"weights missing from the folders: {missing[:5]}")
    load_s = time.perf_counter() - t0

    ids = torch.randint(3, lcfg["vocab_size"], (1, a.prompt_tokens - mf.NUM_QUERY_TOKENS))
    with torch.no_grad():
        t = time.perf_counter()
        img = ref.image(mf.pixel_values(a.image))[2]
        text = ref.lm.model.embed_tokens(ids)
        embeds = torch.cat([text[:, :8], img, text[:, 8:]], dim=1)
        image_s = time.perf_counter() - t

        t = time.perf_counter()
        out = ref.lm(inputs_embeds=embeds, use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        prefill_s = time.perf_counter() - t

        t = time.perf_counter()
        for _ in range(a.tokens - 1):
            nxt = int(torch.argmax(logits))
            out = ref.lm(inputs_embeds=ref.lm.model.embed_tokens(torch.tensor([[nxt]])), past_key_values=past,
                         use_cache=True)
            past, logits = out.past_key_values, out.logits[0, -1]
        decode_s = time.perf_counter() - t
    print(json.dumps({"side": "hf", "load_s": load_s, "prompt_tokens": embeds.shape[1], "image_s": image_s,
                      "prefill_s": prefill_s, "decode_tokens": a.tokens, "decode_s": decode_s,
                      "tokens_per_s": (a.tokens - 1) / decode_s, "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
