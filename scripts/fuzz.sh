#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a fixed time on stable Rust: scripts/fuzz.sh [seconds-per-target] [target...]
#
# libFuzzer through cargo-fuzz, without a sanitizer (`-s none`: Rust code is memory safe, and
# the C decoders are not instrumented either way), under an address-space limit so that an
# allocation sized by a lying header fails and aborts — which libFuzzer reports as a crash, with
# the input saved under fuzz/artifacts/<target>/. New inputs go to fuzz/target/corpus/<target>
# (not committed); the committed seeds in fuzz/corpus/<target> are read. Exits non-zero when a
# target finds a crash.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(image_decode session_load gguf_header safetensors_header pickle export_html)
fi

# cargo-fuzz passes a few unstable flags to rustc; the stable toolchain accepts them with this.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# Address space per target process (KiB): the decoders may use ~1 GiB for the largest image
# accepted, plus conversions; a header that claims more than the file holds must not get it.
mem_kib=$((4 * 1024 * 1024))

cargo fuzz build -s none --dev

status=0
summary=()
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    mkdir -p "$work" "fuzz/corpus/$t"
    log="fuzz/target/$t.log"
    echo "== $t: ${secs}s"
    set +e
    (
        ulimit -v "$mem_kib"
        cargo fuzz run -s none --dev "$t" "$work" "fuzz/corpus/$t" -- \
            -max_total_time="$secs" -timeout=30 -rss_limit_mb=3500 -print_final_stats=1 -close_fd_mask=1
    ) >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | grep -o '[0-9]*' || true)
    if [ "$rc" -ne 0 ]; then
        status=1
        summary+=("$t: FAILED (exit $rc) after ${runs:-?} runs; see $log and fuzz/artifacts/$t/")
        tail -40 "$log"
    else
        summary+=("$t: ok, ${runs:-?} runs in ${secs}s")
    fi
done
printf '%s\n' "${summary[@]}"
exit "$status"
