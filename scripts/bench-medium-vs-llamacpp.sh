#!/usr/bin/env bash
# The medium random model's LLM (8 layers, 2048 wide, vocab 39424) in f32: ziya-visual against
# llama.cpp, whole model, decode and prefill, interleaved rounds.
#
#   scripts/bench-medium-vs-llamacpp.sh
#
# llama.cpp runs the same folder through its convert_hf_to_gguf.py --outtype f32; both sides keep
# the KV cache in f16 (llama.cpp's default, ours on the CPU). Ours is `ziya-visual bench-llm
# --dtype f32`, llama.cpp `llama-bench -p PROMPT -n TOKENS`. Setup and environment as
# scripts/bench-vs-llamacpp.sh (scripts/bench/common.sh); PROMPT (default 512), TOKENS (64).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
PROMPT="${PROMPT:-512}"
TOKENS="${TOKENS:-64}"
MEDIUM="$BENCH_DIR/models/medium"

ensure_llamacpp
ensure_venv
build_ours
if [ ! -f "$MEDIUM/llm/config.json" ]; then
  log "writing the medium random model"
  "$OURS" make-random-model --preset medium --out "$MEDIUM" >/dev/null
fi
if [ ! -f "$MEDIUM/llama-f32.gguf" ]; then
  ensure_gguf_py
  log "converting the medium LLM to GGUF f32 (llama.cpp convert_hf_to_gguf.py)"
  # The converter takes the vocabulary from tokenizer.model (sentencepiece, padded up to the
  # config's vocab_size as for the 13B-shaped folders); the folder itself carries tokenizer.json.
  conv="$MEDIUM/convert.tmp"
  rm -rf "$conv" && mkdir -p "$conv"
  for f in "$MEDIUM"/llm/*; do ln -s "$f" "$conv/"; done
  for f in tokenizer.model tokenizer.json tokenizer_config.json special_tokens_map.json; do
    rm -f "$conv/$f" && cp "$REPO/assets/tiny-ziya/llm/$f" "$conv/$f"
  done
  "$PY" "$LLAMACPP_DIR/src/convert_hf_to_gguf.py" "$conv" --outtype f32 \
    --outfile "$MEDIUM/llama-f32.gguf.tmp" >"$MEDIUM/convert.log" 2>&1
  rm -rf "$conv"
  mv "$MEDIUM/llama-f32.gguf.tmp" "$MEDIUM/llama-f32.gguf"
fi

out="$BENCH_DIR/results/medium-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
raw="$out/raw.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round: ziya-visual"
  RAYON_NUM_THREADS=$THREADS "$OURS" bench-llm --llm-model "$MEDIUM/llm" --dtype f32 --threads "$THREADS" \
    --prompt "$PROMPT" --tokens "$TOKENS" --head-reps 0 |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1])
print(json.dumps({"side":"ours","decode_ms":r["ms_per_token"],"prefill_tps":r["prefill_tokens_per_s"]}))' >>"$raw"
  log "round $round: llama.cpp"
  "$LLAMACPP_DIR/build/bin/llama-bench" -m "$MEDIUM/llama-f32.gguf" -t "$THREADS" -p "$PROMPT" -n "$TOKENS" \
    -r 1 -o json ${LLAMA_BENCH_ARGS:-} 2>/dev/null |
    python3 -c 'import json,sys; ts=json.load(sys.stdin); d={"side":"llama"}
for t in ts:
    if t["n_gen"] > 0: d["decode_ms"] = t["avg_ns"] / t["n_gen"] / 1e6
    elif t["n_prompt"] > 0: d["prefill_tps"] = t["n_prompt"] / (t["avg_ns"] / 1e9)
print(json.dumps(d))' >>"$raw"
done

machine="$(date +%Y-%m-%d), $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), nproc $(nproc)"
python3 - "$raw" "$machine" "$PROMPT" "$TOKENS" "$THREADS" <<'EOF' | tee "$out/table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = lambda s, k: statistics.median(r[k] for r in rows if r["side"] == s)
print(f"Machine: {sys.argv[2]}. Medium random LLM in f32 (f16 KV cache on both sides), {sys.argv[5]} threads, "
      f"medians of {sum(r['side'] == 'ours' for r in rows)} interleaved rounds.")
print()
print("| medium LLM, f32 | ziya-visual | llama.cpp | ours / llama.cpp speed |")
print("|---|---|---|---|")
o, l = med("ours", "decode_ms"), med("llama", "decode_ms")
print(f"| decode ({sys.argv[4]} tokens), ms/token | {o:.1f} | {l:.1f} | {l / o:.2f} |")
o, l = med("ours", "prefill_tps"), med("llama", "prefill_tps")
print(f"| prefill ({sys.argv[3]} tokens), tokens/s | {o:.1f} | {l:.1f} | {o / l:.2f} |")
EOF
log "raw runs: $raw; table: $out/table.md"
