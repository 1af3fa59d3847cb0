#!/usr/bin/env bash
# ziya-visual against HF transformers (torch, CPU, f32) on the "medium" random model (ViT-B-sized
# tower, full Q-Former, 8-layer 2048-wide LLaMA): image embedding, prefill of a ~300-position
# prompt (one image = 32 positions + text), decode tokens/s. Rounds alternate ours / HF, THREADS
# threads on both sides (RAYON_NUM_THREADS, torch.set_num_threads).
#
#   scripts/bench-vs-hf.sh
#
# Ours is `ziya-visual ask --json` (greedy, --ignore-eos, TOKENS new tokens); HF is
# scripts/bench/hf_medium.py, which builds the model with tests/fixtures/make_fixtures.py's
# Reference and loads the same folders. Cache and environment: scripts/bench/common.sh; TOKENS
# (default 64), DTYPE for our side (default f32, as HF).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
TOKENS="${TOKENS:-64}"
DTYPE="${DTYPE:-f32}"
MEDIUM="$BENCH_DIR/models/medium"
IMAGE="$REPO/tests/fixtures/images/photo_odd.png"
# About 240 text tokens with the demo tokenizer; with the image's 32 positions and the chat roles
# the prompt is ~300 positions (the JSON reports the exact count, which HF then uses).
QUERY="$(for i in $(seq 1 5); do printf 'Describe the picture in detail, the colours, the shapes and what the people in it are doing. '; done)"

ensure_venv
build_ours
if [ ! -f "$MEDIUM/llm/config.json" ]; then
  log "writing the medium random model"
  "$OURS" make-random-model --preset medium --out "$MEDIUM" >/dev/null
fi

out="$BENCH_DIR/results/hf-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
raw="$out/raw.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  log "round $round: ziya-visual"
  RAYON_NUM_THREADS=$THREADS "$OURS" ask --vision-model "$MEDIUM/vision" --llm-model "$MEDIUM/llm" --image "$IMAGE" \
    --dtype "$DTYPE" --max-new-tokens "$TOKENS" --ignore-eos --temperature 0 --json "$QUERY" |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); t=r["timings"];
print(json.dumps({"side":"ours","round":'"$round"',"prompt_tokens":r["prompt_tokens"],"load_s":t["load_s"],
 "image_s":t["image_s"],"prefill_s":t["prefill_s"],"decode_s":t["decode_s"],
 "tokens_per_s":(r["generated_tokens"]-1)/t["decode_s"]}))' >>"$raw"
  prompt_tokens=$(tail -1 "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prompt_tokens"])')
  log "round $round: HF transformers ($prompt_tokens prompt positions)"
  "$PY" "$REPO/scripts/bench/hf_medium.py" --vision "$MEDIUM/vision" --llm "$MEDIUM/llm" --image "$IMAGE" \
    --prompt-tokens "$prompt_tokens" --tokens "$TOKENS" --threads "$THREADS" |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); r["round"]='"$round"'; print(json.dumps(r))' >>"$raw"
done

machine="$(date +%Y-%m-%d), $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), nproc $(nproc)"
python3 - "$raw" "$machine" "$DTYPE" <<'EOF' | tee "$out/table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = {s: [r for r in rows if r["side"] == s] for s in ("ours", "hf")}
med = lambda s, k: statistics.median(r[k] for r in by[s])
rng = lambda s, k: "–".join(f"{x:.3g}" for x in (min(r[k] for r in by[s]), max(r[k] for r in by[s])))
hf = by["hf"][0]
print(f"Machine: {sys.argv[2]}. Medium random model, {hf['threads']} threads, medians of {len(by['ours'])} "
      f"alternating rounds (range in brackets); ziya-visual {sys.argv[3]}, HF torch {hf['torch']} f32.")
print()
print("| | ziya-visual | HF transformers | ours faster by (HF time / ours; ours tokens/s / HF) |")
print("|---|---|---|---|")
for key, name in (("image_s", "image embedding, s"), ("prefill_s", f"prefill of {hf['prompt_tokens']} positions, s")):
    print(f"| {name} | {med('ours', key):.3f} ({rng('ours', key)}) | {med('hf', key):.3f} ({rng('hf', key)}) | "
          f"{med('hf', key) / med('ours', key):.2f} |")
k = "tokens_per_s"
print(f"| decode, tokens/s | {med('ours', k):.2f} ({rng('ours', k)}) | {med('hf', k):.2f} ({rng('hf', k)}) | "
      f"{med('ours', k) / med('hf', k):.2f} |")
EOF
log "raw runs: $raw; table: $out/table.md"
