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
# (default 64), DTYPES for our side (default f32, as HF; "f32 f16" runs ours in both each round,
# the table gets a column each).
#
#   MODEL=vitg TOKENS=4 DTYPES="f32 f16" scripts/bench-vs-hf.sh
#
# MODEL=vitg swaps in the real vision shapes: EVA ViT-g/14 (39 layers, 1408 wide) with the full
# Q-Former, written by `make-random-model --preset ziya13b --vision-only` (4.4 GB), and the 2-layer
# 13B-shaped LLM of scripts/bench-vs-llamacpp.sh (run that first) — for the image row.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
TOKENS="${TOKENS:-64}"
DTYPES="${DTYPES:-${DTYPE:-f32}}"
MODEL="${MODEL:-medium}"
MEDIUM="$BENCH_DIR/models/medium"
case "$MODEL" in
  medium) VISION="$MEDIUM/vision" LLM="$MEDIUM/llm" ;;
  vitg) VISION="$BENCH_DIR/models/vitg/vision" LLM="$BENCH_DIR/models/13b-l2/hf" ;;
  *) echo "MODEL is medium or vitg" >&2; exit 1 ;;
esac
IMAGE="$REPO/tests/fixtures/images/photo_odd.png"
# About 240 text tokens with the demo tokenizer; with the image's 32 positions and the chat roles
# the prompt is ~300 positions (the JSON reports the exact count, which HF then uses).
QUERY="$(for i in $(seq 1 5); do printf 'Describe the picture in detail, the colours, the shapes and what the people in it are doing. '; done)"

ensure_venv
build_ours
if [ "$MODEL" = medium ] && [ ! -f "$MEDIUM/llm/config.json" ]; then
  log "writing the medium random model"
  "$OURS" make-random-model --preset medium --out "$MEDIUM" >/dev/null
fi
if [ "$MODEL" = vitg ]; then
  [ -f "$LLM/config.json" ] || { echo "missing $LLM: run scripts/bench-vs-llamacpp.sh first" >&2; exit 1; }
  if [ ! -f "$VISION/model.safetensors" ]; then
    log "writing the ViT-g-shaped random vision folder"
    rm -rf "$BENCH_DIR/models/vitg.tmp"
    "$OURS" make-random-model --preset ziya13b --vision-only --out "$BENCH_DIR/models/vitg.tmp" >/dev/null
    rm -rf "$BENCH_DIR/models/vitg" && mv "$BENCH_DIR/models/vitg.tmp" "$BENCH_DIR/models/vitg"
  fi
fi

out="$BENCH_DIR/results/hf-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
raw="$out/raw.jsonl"
for round in $(seq 1 "$ROUNDS"); do
  for dtype in $DTYPES; do
    log "round $round: ziya-visual $dtype"
    RAYON_NUM_THREADS=$THREADS "$OURS" ask --vision-model "$VISION" --llm-model "$LLM" --image "$IMAGE" \
      --dtype "$dtype" --max-new-tokens "$TOKENS" --ignore-eos --temperature 0 --json "$QUERY" |
      python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); t=r["timings"];
print(json.dumps({"side":"ours '"$dtype"'","round":'"$round"',"prompt_tokens":r["prompt_tokens"],"load_s":t["load_s"],
 "image_s":t["image_s"],"prefill_s":t["prefill_s"],"decode_s":t["decode_s"],
 "tokens_per_s":(r["generated_tokens"]-1)/t["decode_s"]}))' >>"$raw"
  done
  prompt_tokens=$(tail -1 "$raw" | python3 -c 'import json,sys; print(json.load(sys.stdin)["prompt_tokens"])')
  log "round $round: HF transformers ($prompt_tokens prompt positions)"
  "$PY" "$REPO/scripts/bench/hf_medium.py" --vision "$VISION" --llm "$LLM" --image "$IMAGE" \
    --prompt-tokens "$prompt_tokens" --tokens "$TOKENS" --threads "$THREADS" |
    python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); r["round"]='"$round"'; print(json.dumps(r))' >>"$raw"
done

machine="$(date +%Y-%m-%d), $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), nproc $(nproc)"
python3 - "$raw" "$machine" "$MODEL" <<'EOF' | tee "$out/table.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
sides = list(dict.fromkeys(r["side"] for r in rows if r["side"] != "hf")) + ["hf"]
by = {s: [r for r in rows if r["side"] == s] for s in sides}
med = lambda s, k: statistics.median(r[k] for r in by[s])
rng = lambda s, k: "–".join(f"{x:.3g}" for x in (min(r[k] for r in by[s]), max(r[k] for r in by[s])))
hf = by["hf"][0]
name = {"medium": "Medium random model", "vitg": "ViT-g/14 + Q-Former random vision folder, 2-layer 13B-shaped LLM"}
ours = [s for s in sides if s != "hf"]
print(f"Machine: {sys.argv[2]}. {name[sys.argv[3]]}, {hf['threads']} threads, medians of {len(by['hf'])} "
      f"alternating rounds (range in brackets); HF torch {hf['torch']} f32.")
print()
print("| | " + " | ".join(f"ziya-visual {s[5:]}" for s in ours) + " | HF transformers f32 | " +
      " | ".join(f"{s[5:]}: ours faster by" for s in ours) + " |")
print("|---|" + "---|" * (2 * len(ours) + 1))
for key, label in (("image_s", "image embedding, s"), ("prefill_s", f"prefill of {hf['prompt_tokens']} positions, s")):
    print(f"| {label} | " + " | ".join(f"{med(s, key):.3f} ({rng(s, key)})" for s in ours) +
          f" | {med('hf', key):.3f} ({rng('hf', key)}) | " +
          " | ".join(f"{med('hf', key) / med(s, key):.2f}" for s in ours) + " |")
k = "tokens_per_s"
print("| decode, tokens/s | " + " | ".join(f"{med(s, k):.2f} ({rng(s, k)})" for s in ours) +
      f" | {med('hf', k):.2f} ({rng('hf', k)}) | " + " | ".join(f"{med(s, k) / med('hf', k):.2f}" for s in ours) + " |")
EOF
log "raw runs: $raw; table: $out/table.md"
