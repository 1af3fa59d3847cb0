#!/usr/bin/env bash
# Peak resident memory against the planner, on 2- and 4-layer LLaMA-13B-shaped models at the full
# 2048-position context, extrapolated to the 40 layers of Ziya-LLaMA-13B.
#
#   scripts/bench-memory.sh            # after scripts/bench-vs-llamacpp.sh has written the models
#   FORMATS="q4k" scripts/bench-memory.sh
#
# Each run is the real `ziya-visual ask` (image, prompt, answer) under /usr/bin/time: a prompt
# filling the context up to NEW (default 32) answer tokens with one image, so the KV cache ends up
# holding every position. The plan is `ziya-visual plan` for the same files, prompt and context.
# Both grow linearly with the layers, so 40 layers = t(2) + 19 × (t(4) − t(2)) on each side; the
# vision folder is the benchmarks' tiny one (its projection maps to 5120), so the 40-layer figures
# are the LLM side plus the program. Cache and environment: scripts/bench/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
FORMATS="${FORMATS:-q4k q8_0}"
NEW="${NEW:-32}"
CONTEXT=2048
MODELS="$BENCH_DIR/models"
VISION="$MODELS/13b-vision"
IMAGE="$REPO/tests/fixtures/images/photo_odd.png"
UNIT="The children walk along the river and look at the boats. "

for f in $FORMATS; do
  for layers in 2 4; do
    if [ ! -f "$MODELS/13b-l$layers/ours-$f.gguf" ] || [ ! -f "$VISION/config.json" ]; then
      echo "missing $MODELS/13b-l$layers/ours-$f.gguf: run FORMATS=\"$FORMATS\" scripts/bench-vs-llamacpp.sh first" >&2
      exit 1
    fi
  done
done
build_ours

ask() { # gguf repeats new → JSON line on stdout, peak RSS KB on fd 3
  local query
  query="$(for _ in $(seq 1 "$2"); do printf '%s' "$UNIT"; done)"
  /usr/bin/time -f '%M' -o "$tmp/rss" "$OURS" ask --vision-model "$VISION" --llm-model "$1" --image "$IMAGE" \
    --max-new-tokens "$3" --ignore-eos --temperature 0 --json "$query" | tail -1
  cat "$tmp/rss" >&3
}
prompt_tokens() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["prompt_tokens"])'; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
out="$BENCH_DIR/results/memory-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
raw="$out/raw.jsonl"
# Prompt length per repetition of UNIT, from two short runs on the smallest model.
first="$(echo $FORMATS | cut -d' ' -f1)"
p1="$(ask "$MODELS/13b-l2/ours-$first.gguf" 1 1 3>/dev/null | prompt_tokens)"
p2="$(ask "$MODELS/13b-l2/ours-$first.gguf" 2 1 3>/dev/null | prompt_tokens)"
repeats=$(( (CONTEXT - NEW - p1) / (p2 - p1) + 1 ))
log "prompt: $p1 positions with one repetition, $((p2 - p1)) per repetition → $repeats repetitions"
for f in $FORMATS; do
  for layers in 2 4; do
    gguf="$MODELS/13b-l$layers/ours-$f.gguf"
    log "$f, $layers layers"
    json="$(ask "$gguf" "$repeats" "$NEW" 3>"$tmp/kb")"
    prompt="$(echo "$json" | prompt_tokens)"
    plan="$("$OURS" plan --vision-model "$VISION" --llm-model "$gguf" --prompt "$prompt" --context $CONTEXT)"
    python3 - "$f" "$layers" "$prompt" "$(cat "$tmp/kb")" "$plan" "$json" >>"$raw" <<'EOF'
import json, sys
fmt, layers, prompt, kb, plan, run = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]), json.loads(sys.argv[6])
mem = run.get("memory") or {}
print(json.dumps({"fmt": fmt, "layers": layers, "prompt": prompt, "generated": run["generated_tokens"],
                  "peak_rss": kb * 1024, "load_peak": mem.get("load_peak_bytes"), "run_peak": mem.get("run_peak_bytes"),
                  "plan": plan["plan"]}))
EOF
  done
done
python3 - "$raw" <<'EOF' | tee "$out/table.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
gb = lambda b: f"{b / 1e9:.2f}"
print("| format | layers | positions | plan GB | peak RSS GB | RSS / plan |")
print("|---|---|---|---|---|---|")
by = {}
for r in rows:
    by[(r["fmt"], r["layers"])] = r
    total = r["plan"]["total"]
    print(f"| {r['fmt']} | {r['layers']} | {r['prompt'] + r['generated']} | {gb(total)} | {gb(r['peak_rss'])} | "
          f"{r['peak_rss'] / total:.3f} |")
print()
print("| format | 40 layers = t(2) + 19 × (t(4) − t(2)) | plan GB | peak RSS GB | RSS / plan | per layer (weights + KV): plan MB / RSS MB |")
print("|---|---|---|---|---|---|")
for fmt in dict.fromkeys(r["fmt"] for r in rows):
    a, b = by.get((fmt, 2)), by.get((fmt, 4))
    if not a or not b:
        continue
    # The plan's peak is weights + max(loading's extra, KV cache + activations): its layer-bound
    # parts (weights, KV cache) extrapolate linearly, then the max is taken at 40 layers.
    lin = lambda k: a["plan"][k] + 19 * (b["plan"][k] - a["plan"][k])
    pa = a["plan"]
    p = pa["runtime"] + pa["vision_weights"] + lin("llm_weights") + max(pa["loading"], lin("kv_cache") + pa["activations"])
    m = a["peak_rss"] + 19 * (b["peak_rss"] - a["peak_rss"])
    pl = (b["plan"]["llm_weights"] + b["plan"]["kv_cache"] - pa["llm_weights"] - pa["kv_cache"]) / 2e6
    ml = (b["peak_rss"] - a["peak_rss"]) / 2e6
    print(f"| {fmt} | extrapolated | {gb(p)} | {gb(m)} | {m / p:.3f} | {pl:.0f} / {ml:.0f} |")
# The two phases apart (`ask --json`'s memory: the peak while loading, then the peak from the end
# of loading to the end of the answer), each against its side of the plan: loading = program +
# weights + loading's transient, running = program + weights + KV cache + activations.
if all(r.get("run_peak") for r in rows):
    print()
    print("| format | phase | 2 layers plan / RSS GB | 4 layers plan / RSS GB | 40 layers plan / RSS GB | RSS / plan at 40 |")
    print("|---|---|---|---|---|---|")
    for fmt in dict.fromkeys(r["fmt"] for r in rows):
        a, b = by.get((fmt, 2)), by.get((fmt, 4))
        if not a or not b:
            continue
        for phase, key, extra in (("loading", "load_peak", ("loading",)), ("running", "run_peak", ("kv_cache", "activations"))):
            plan = lambda r: r["plan"]["runtime"] + r["plan"]["vision_weights"] + r["plan"]["llm_weights"] + sum(r["plan"][k] for k in extra)
            p40 = plan(a) + 19 * (plan(b) - plan(a))
            m40 = a[key] + 19 * (b[key] - a[key])
            print(f"| {fmt} | {phase} | {gb(plan(a))} / {gb(a[key])} | {gb(plan(b))} / {gb(b[key])} | {gb(p40)} / {gb(m40)} | {m40 / p40:.3f} |")
EOF
log "raw runs: $raw; table: $out/table.md"
