#!/usr/bin/env bash
# Decode and prefill cost per LLaMA-13B layer: ziya-visual (candle) against llama.cpp, on the CPU.
#
#   scripts/bench-vs-llamacpp.sh            # everything: setup (cached), 3 interleaved rounds, table
#   FORMATS="q4k f16" ROUNDS=1 PROMPT=0 scripts/bench-vs-llamacpp.sh   # a quick look
#
# A 13B layer is timed as (t(4-layer model) − t(2-layer model)) / 2 on random models with the real
# shapes (hidden 5120, intermediate 13824, 40 heads, vocab 39424), so embedding, head and overhead
# cancel. Both sides run the same HF folder: llama.cpp through its convert_hf_to_gguf.py and
# `llama-quantize --pure` (every linear layer in one format, as our --quant), ziya-visual through
# `ziya-visual quantize` (the f16 row loads the safetensors folder with --dtype f16). Each round runs,
# per format: ours 2 layers, llama.cpp 2 layers, ours 4 layers, llama.cpp 4 layers, so load from
# other work on the machine hits both sides alike; only the ratios of one run mean anything.
#
# Setup on first run (cached under $BENCH_DIR, see scripts/bench/common.sh): llama.cpp from the
# llama-cpp-python sdist on PyPI built with Debian's cmake (~15 min), a venv with the pinned fixture
# requirements + gguf-py, the models (~25 GB of disk), our release binary.
#
# More environment: FORMATS (default "q4k q8_0 f16"; q6k also works), PROMPT (prefill length,
# default 512; 0 skips prefill), TOKENS (decoded tokens, default 64), DEPTHS (positions already in
# the cache when decoding starts, default "0"; several, e.g. "50 1500", are interleaved in each
# round and add a table of decode at each depth against the first: `--depth` / `llama-bench -d`,
# prefilled untimed), LLAMA_BENCH_ARGS (extra
# llama-bench flags, e.g. "--poll 0": its thread pool spins by default, which costs it dearly
# when other processes share the cores).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench/common.sh"
FORMATS="${FORMATS:-q4k q8_0 f16}"
PROMPT="${PROMPT:-512}"
TOKENS="${TOKENS:-64}"
DEPTHS="${DEPTHS:-0}"
MODELS="$BENCH_DIR/models"
SUMMARIZE="python3 $REPO/scripts/bench/summarize.py"

ggml_type() { case "$1" in q4k) echo Q4_K ;; q6k) echo Q6_K ;; q8_0) echo Q8_0 ;; f16) echo F16 ;; esac; }

# HF folder (f16 safetensors) → llama.cpp GGUFs and our GGUFs, for one layer count.
ensure_models() {
  local layers=$1 dir="$MODELS/13b-l$1"
  mkdir -p "$dir"
  if [ ! -f "$dir/hf/config.json" ]; then
    log "writing the $layers-layer 13B-shaped random model"
    "$PY" "$REPO/scripts/bench/make_llama_shaped.py" --layers "$layers" --out "$dir/hf.tmp" \
      --vision-out "$MODELS/13b-vision" >/dev/null
    rm -rf "$dir/hf" && mv "$dir/hf.tmp" "$dir/hf"
  fi
  if [ ! -f "$dir/llama-f16.gguf" ]; then
    ensure_gguf_py
    log "converting to GGUF f16 (llama.cpp convert_hf_to_gguf.py)"
    "$PY" "$LLAMACPP_DIR/src/convert_hf_to_gguf.py" "$dir/hf" --outtype f16 --outfile "$dir/llama-f16.gguf.tmp" \
      >"$dir/convert.log" 2>&1 || { tail -20 "$dir/convert.log" >&2; exit 1; }
    mv "$dir/llama-f16.gguf.tmp" "$dir/llama-f16.gguf"
  fi
  for f in $FORMATS; do
    [ "$f" = f16 ] && continue
    if [ ! -f "$dir/llama-$f.gguf" ]; then
      log "llama-quantize --pure $(ggml_type "$f") ($layers layers)"
      # Absolute paths: llama-quantize takes an argument that starts with digits for a type number.
      "$LLAMACPP_DIR/build/bin/llama-quantize" --pure "$dir/llama-f16.gguf" "$dir/llama-$f.tmp.gguf" \
        "$(ggml_type "$f")" "$THREADS" >"$dir/quantize-$f.log" 2>&1 || { tail -20 "$dir/quantize-$f.log" >&2; exit 1; }
      mv "$dir/llama-$f.tmp.gguf" "$dir/llama-$f.gguf"
    fi
    if [ ! -f "$dir/ours-$f.gguf" ]; then
      log "ziya-visual quantize --quant $f ($layers layers)"
      "$OURS" quantize --llm-model "$dir/hf" --quant "$f" --out "$dir/ours-$f.tmp.gguf" >/dev/null 2>&1
      mv "$dir/ours-$f.tmp.gguf" "$dir/ours-$f.gguf"
    fi
  done
}

run_ours() { # fmt layers depth
  local dir="$MODELS/13b-l$2" model dtype
  if [ "$1" = f16 ]; then model="$dir/hf" dtype=f16; else model="$dir/ours-$1.gguf" dtype=f32; fi
  RAYON_NUM_THREADS=$THREADS "$OURS" bench-llm --llm-model "$model" --dtype "$dtype" --threads "$THREADS" \
    --prompt "$PROMPT" --tokens "$TOKENS" --depth "$3"
}

run_llama() { # fmt layers depth
  "$LLAMACPP_DIR/build/bin/llama-bench" -m "$MODELS/13b-l$2/llama-$1.gguf" -t "$THREADS" -p "$PROMPT" \
    -n "$TOKENS" -d "$3" -r 1 -o json ${LLAMA_BENCH_ARGS:-} 2>/dev/null
}

ensure_llamacpp
ensure_venv
build_ours
for layers in 2 4; do ensure_models "$layers"; done

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"
out="$BENCH_DIR/results/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
raw="$out/raw.jsonl"
log "measuring: formats [$FORMATS], $ROUNDS rounds, $THREADS threads → $out"
for round in $(seq 1 "$ROUNDS"); do
  RAYON_NUM_THREADS=$THREADS "$OURS" bench-llm --llm-model . --threads "$THREADS" --roof-only |
    $SUMMARIZE roof --round "$round" >>"$raw"
  for f in $FORMATS; do
    for depth in $DEPTHS; do
      for layers in 2 4; do
        log "round $round: $f, $layers layers, depth $depth"
        run_ours "$f" "$layers" "$depth" |
          $SUMMARIZE ours --fmt "$f" --layers "$layers" --depth "$depth" --round "$round" >>"$raw"
        run_llama "$f" "$layers" "$depth" |
          $SUMMARIZE llama --fmt "$f" --layers "$layers" --depth "$depth" --round "$round" >>"$raw"
      done
    done
  done
done
machine="$(date +%Y-%m-%d), $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1), nproc $(nproc), $(free -g | awk '/^Mem:/{print $2}') GB RAM; load average (1, 5, 15 min) $load_start at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
$SUMMARIZE table "$raw" --machine "$machine" | tee "$out/table.md"
log "raw runs: $raw; table: $out/table.md"
