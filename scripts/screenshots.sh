#!/usr/bin/env bash
# Refreshes the README's screenshots from the real app (release build) under Xvfb, with only
# DejaVu among the system fonts (the Chinese text comes from the font the app bundles):
#   assets/screenshot.png      a two-image conversation with the demo model, English
#   assets/screenshot-zh.png   the same in Chinese
#   assets/screenshot-plan.png the model panel refusing a model that does not fit, with the
#                              planner's choices that do (MEDIUM=DIR/{vision,llm}: a larger random
#                              model, e.g. `ziya-visual make-random-model --preset medium`)
# Needs: Xvfb, openbox, xdotool, imagemagick (`import`), Mesa's software OpenGL.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/ziya-visual
[ -x "$bin" ] || cargo build --release
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cat >"$work/fonts.conf" <<EOF
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig>
  <dir>/usr/share/fonts/truetype/dejavu</dir>
  <cachedir>$work/fc-cache</cachedir>
</fontconfig>
EOF
export FONTCONFIG_FILE="$work/fonts.conf"
export DISPLAY=:77
Xvfb "$DISPLAY" -screen 0 1360x860x24 -nolisten tcp >/dev/null 2>&1 &
sleep 1
openbox >/dev/null 2>&1 &
sleep 1

vision=assets/tiny-ziya/vision
llm=assets/tiny-ziya/llm
images=tests/fixtures/images

# A conversation: two photos in the first turn, a follow-up, as `ask` writes it (the demo
# model's answers are noise; the app says so).
conversation() { # FILE LANG Q1 Q2
    "$bin" ask --vision-model "$vision" --llm-model "$llm" --image "$images/large.jpg" \
        --image "$images/story_03.png" --max-new-tokens 40 --seed 7 --save-session "$1" "$3" >/dev/null
    "$bin" ask --vision-model "$vision" --llm-model "$llm" --session "$1" --save-session "$1" \
        --max-new-tokens 30 --seed 8 "$4" >/dev/null
}

# Opens the window with a fresh data folder and the given environment; waits until it has
# drawn and settled, then saves the window.
shoot() { # OUT LANG ARGS...
    local out=$1 lang=$2
    shift 2
    local data="$work/data-$(basename "$out" .png)"
    mkdir -p "$data"
    XDG_DATA_HOME="$data" XDG_CONFIG_HOME="$data" LANG="$lang" LC_ALL="$lang" "$bin" "$@" &
    local pid=$!
    local win=""
    for _ in $(seq 60); do
        win=$(xdotool search --name "Ziya-Visual" 2>/dev/null | head -1 || true)
        [ -n "$win" ] && break
        sleep 0.5
    done
    [ -n "$win" ] || { echo "the window did not open" >&2; exit 1; }
    xdotool windowsize "$win" 1320 820
    xdotool windowmove "$win" 20 20
    sleep "${SETTLE:-12}"
    import -window "$win" "$out"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    echo "$out"
}

conversation "$work/en.json" en "What is in these two pictures?" "Tell a short story about them."
conversation "$work/zh.json" zh "这两张图片里有什么？" "请根据它们讲一个小故事。"
shoot assets/screenshot.png en_US.UTF-8 --demo --session "$work/en.json"
shoot assets/screenshot-zh.png zh_CN.UTF-8 --demo --session "$work/zh.json"

if [ -n "${MEDIUM:-}" ]; then
    # The planner refuses full precision on a machine with 2.2 GB to spare and offers what fits.
    ZIYA_VISUAL_MEMORY_LIMIT=2200000000 shoot assets/screenshot-plan.png en_US.UTF-8 \
        --vision-model "$MEDIUM/vision" --llm-model "$MEDIUM/llm" --dtype f32
fi
