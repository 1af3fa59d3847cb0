#!/usr/bin/env python3
"""The GPU check: a CUDA build against the CPU and HF transformers, and 13B-shaped layers against
the card's memory-bandwidth roof, in one run sized for a short GPU lease (about 5 minutes).

    python3 scripts/gpu-check.py --bin target/cuda/release/ziya-visual --out DIR

1. Token ids. Each reference case of tests/fixtures/reference/cases.json (HF transformers' greedy
   ids on the committed tiny checkpoint) through `ask --json --device cuda` in f32, f16 and bf16,
   and `--device cpu` in f32. f32 on the GPU must give HF's ids; f16/bf16 are reported as the
   length of the prefix they share with them (random weights leave margins as small as 0.08, which
   half precision may flip, so a shorter prefix there is not by itself a fault).
2. Roof. The card's read bandwidth through PyTorch (the best of several sums of a 4 GiB buffer,
   and a device-to-device copy), when python3 there has torch.
3. 13B-shaped layers. scripts/bench/make_llama_shaped.py writes 2- and 4-layer random LLaMA-13B-
   shaped folders (or --models DIR reuses DIR/13b-l2 and DIR/13b-l4, or their hf/); `bench-llm --device cuda`
   times each in f16 and in q4k (GGUFs written once by `ziya-visual quantize`), interleaved, three
   rounds; per-layer figures are the difference of the 4- and 2-layer runs halved (one-time costs
   cancel), the median over rounds, set against the layer's bytes read at the roof.

Writes DIR/gpu-check.json (everything measured) and DIR/gpu-check.md (the tables), and prints the
tables. The CUDA libraries are looked up in python3's site-packages/nvidia/*/lib (where the GPU
machines have them) and added to LD_LIBRARY_PATH for the binary.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "tests" / "fixtures" / "reference" / "cases.json"
IMAGES = ROOT / "tests" / "fixtures" / "images"
TINY = ROOT / "assets" / "tiny-ziya"
LOG = []


def say(*parts):
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    LOG.append(line)


def cuda_env():
    env = dict(os.environ)
    dirs = []
    try:
        import nvidia  # the wheels' namespace package

        for base in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(base, "*", "lib")))
    except ImportError:
        pass
    if dirs:
        env["LD_LIBRARY_PATH"] = ":".join(dirs + [env.get("LD_LIBRARY_PATH", "")]).rstrip(":")
    return env


def run(cmd, env, timeout):
    """(returncode, stdout, stderr, seconds); a timeout or a missing binary is a failed run."""
    t = time.time()
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        return p.returncode, p.stdout, p.stderr, time.time() - t
    except (subprocess.TimeoutExpired, OSError) as e:
        return -1, "", str(e), time.time() - t


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def check_ids(binary, env, report):
    cases = json.loads(CASES.read_text())["cases"]
    runs = [("cuda", "f32"), ("cuda", "f16"), ("cuda", "bf16"), ("cpu", "f32")]
    rows, ok = [], True
    for name, turns in cases.items():
        turn = turns[0]  # later turns need the earlier answers: the first of each is enough here
        want = turn["token_ids"]
        row = {"case": name, "tokens": len(want), "min_margin": round(turn["min_margin"], 3)}
        for device, dtype in runs:
            cmd = [binary, "ask", "--vision-model", str(TINY / "vision"), "--llm-model", str(TINY / "llm"),
                   "--device", device, "--dtype", dtype, "--temperature", "0",
                   "--max-new-tokens", str(turn["max_new_tokens"]), "--json"]
            for image in turn["images"]:
                cmd += ["--image", str(IMAGES / image)]
            cmd.append(turn["query"])
            rc, out, err, secs = run(cmd, env, 180)
            key = f"{device}_{dtype}"
            if rc != 0:
                row[key] = {"error": err.strip()[-400:]}
                ok = False
                say(f"  {name} {key}: FAILED ({rc}): {err.strip()[-400:]}")
                continue
            j = json.loads(out)
            got = j["token_ids"]
            prefix = common_prefix(got, want)
            row[key] = {"device": j["device"], "dtype": j["dtype"], "same_prefix": prefix,
                        "identical": got == want, "timings": j["timings"], "wall_s": round(secs, 2)}
            if device == "cuda" and j["device"] != "cuda":
                ok = False
                say(f"  {name} {key}: ran on {j['device']}, not cuda: {err.strip()[-300:]}")
            if dtype == "f32" and got != want:
                ok = False
            say(f"  {name} {key}: {prefix}/{len(want)} ids as HF, device {j['device']}, {secs:.1f} s")
        rows.append(row)
    report["ids"] = {"ok": ok, "cases": rows}
    lines = ["| case (tokens, min margin) | cuda f32 | cuda f16 | cuda bf16 | cpu f32 |", "|---|---|---|---|---|"]
    for r in rows:
        cells = []
        for device, dtype in runs:
            c = r.get(f"{device}_{dtype}", {})
            cells.append("error" if "error" in c else f"{c['same_prefix']}/{r['tokens']}" + ("" if c["device"] == device else f" ({c['device']}!)"))
        lines.append(f"| {r['case']} ({r['tokens']}, {r['min_margin']}) | " + " | ".join(cells) + " |")
    return ok, lines


def roof(report):
    """GB/s read (sum of a 4 GiB f16 buffer) and copied (read + written), the best of 10 each."""
    try:
        import torch
    except ImportError:
        say("  no torch: roof not measured")
        return None
    if not torch.cuda.is_available():
        say("  torch sees no GPU: roof not measured")
        return None
    n = 2 << 30  # f16 elements: 4 GiB
    x = torch.ones(n, dtype=torch.float16, device="cuda")
    y = torch.empty_like(x)
    best_read, best_copy = 0.0, 0.0
    for _ in range(3):
        x.sum(dtype=torch.float32)
        y.copy_(x)
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        x.sum(dtype=torch.float32)
        e.record()
        e.synchronize()
        best_read = max(best_read, 2 * n / (s.elapsed_time(e) / 1e3) / 1e9)
        s.record()
        y.copy_(x)
        e.record()
        e.synchronize()
        best_copy = max(best_copy, 4 * n / (s.elapsed_time(e) / 1e3) / 1e9)
    props = torch.cuda.get_device_properties(0)
    report["roof"] = {"gpu": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "read_gbps": round(best_read, 1), "copy_gbps": round(best_copy, 1), "torch": torch.__version__}
    say(f"  {props.name}: read {best_read:.0f} GB/s (sum), copy {best_copy:.0f} GB/s (read + written)")
    del x, y
    torch.cuda.empty_cache()
    return best_read


def start_models(args):
    """The 2- and 4-layer folders and the writers still running (numpy on the CPU, while the
    id checks and the roof use the GPU)."""
    if args.models:  # the folders scripts/bench-vs-llamacpp.sh leaves (HF in an hf/ inside each)
        dirs = {n: Path(args.models) / f"13b-l{n}" for n in (2, 4)}
        return {n: d / "hf" if (d / "hf").is_dir() else d for n, d in dirs.items()}, []
    dirs = {n: args.work / f"13b-l{n}" for n in (2, 4)}
    procs = [subprocess.Popen([sys.executable, str(ROOT / "scripts" / "bench" / "make_llama_shaped.py"),
                               "--layers", str(n), "--out", str(d)], stdout=subprocess.DEVNULL)
             for n, d in dirs.items() if not (d / "model.safetensors").exists()]
    return dirs, procs


def finish_models(procs):
    t = time.time()
    failed = [p.args for p in procs if p.wait() != 0]
    if procs:
        say(f"  waited {time.time() - t:.0f} s more for the 13B-shaped models")
    return not failed


def quantize(binary, env, models, report):
    """q4k GGUFs of both models, written once (`ziya-visual quantize`, on every CPU core), so the
    timed runs load in seconds; the quantizing time is reported."""
    out = {}
    for layers, d in models.items():
        gguf = d.parent / f"{d.name}-q4k.gguf" if d.name == "hf" else d / "q4k.gguf"
        if not gguf.exists():
            rc, _, err, secs = run([binary, "quantize", "--llm-model", str(d), "--quant", "q4k", "--out", str(gguf)], env, 300)
            if rc != 0:
                say(f"  quantize l{layers}: FAILED ({rc}): {err.strip()[-400:]}")
                continue
            report.setdefault("quantize_s", {})[layers] = round(secs, 1)
            say(f"  quantized l{layers} to q4k in {secs:.1f} s ({os.cpu_count()} CPUs)")
        out[layers] = gguf
    return out


def median(values):
    v = sorted(values)
    n = len(v)
    return (v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2) if n else None


def bench_layers(binary, env, args, models, read_gbps, report):
    results = []
    configs = [("f16", models), ("q4k", quantize(binary, env, models, report))]
    for rnd in range(args.rounds):
        for name, paths in configs:
            for layers, d in paths.items():
                cmd = [binary, "bench-llm", "--llm-model", str(d), "--device", "cuda", "--dtype", "f16",
                       "--prompt", str(args.prompt), "--reps", str(args.reps), "--tokens", str(args.tokens),
                       "--head-reps", "50"]
                rc, out, err, secs = run(cmd, env, 240)
                if rc != 0:
                    say(f"  {name} {layers} layers round {rnd}: FAILED ({rc}): {err.strip()[-400:]}")
                    continue
                j = json.loads(out.strip().splitlines()[-1])
                j.update({"format": name, "round": rnd, "wall_s": round(secs, 1)})
                results.append(j)
                say(f"  {name} l{layers} r{rnd}: {j['device']}, load {j['load_s']:.1f} s, prefill {args.prompt} "
                    f"{j['prefill_s'] * 1e3:.1f} ms (median of {args.reps}), decode {j['ms_per_token_median']:.3f} "
                    f"ms/token (median of {args.tokens}), head {j['head_ms'] or 0:.3f} ms, "
                    f"{j['weight_bytes_per_token'] / 1e9:.2f} GB/token")
    report["bench"] = results
    lines = ["| per 13B layer (f16 activations) | decode ms/token | GB read | at roof ms | % of roof | prefill "
             f"{args.prompt} ms | prefill tok/s |", "|---|---|---|---|---|---|---|"]
    for name, _ in configs:
        rounds = []
        for rnd in range(args.rounds):
            by = {r["layers"]: r for r in results if r["format"] == name and r["round"] == rnd}
            if 2 in by and 4 in by:
                rounds.append({
                    "decode_ms": (by[4]["ms_per_token_median"] - by[2]["ms_per_token_median"]) / 2,
                    "prefill_ms": (by[4]["prefill_s"] - by[2]["prefill_s"]) / 2 * 1e3,
                    "gb": (by[4]["weight_bytes_per_token"] - by[2]["weight_bytes_per_token"]) / 2 / 1e9,
                    "head_ms": by[4]["head_ms"], "head_gb": (by[4]["head_bytes"] or 0) / 1e9})
        if not rounds:
            lines.append(f"| {name} | failed | | | | | |")
            continue
        # The median over rounds of each round's 4-layer minus 2-layer difference.
        best = {k: median([r[k] for r in rounds]) for k in rounds[0]}
        best["rounds"] = rounds
        at_roof = best["gb"] / read_gbps * 1e3 if read_gbps else None
        pct = f"{at_roof / best['decode_ms'] * 100:.0f} %" if at_roof and best["decode_ms"] > 0 else "–"
        tps = f"{args.prompt / (best['prefill_ms'] / 1e3):.0f}" if best["prefill_ms"] > 0 else "–"
        at = f"{at_roof:.3f}" if at_roof else "–"
        lines.append(f"| {name} | {best['decode_ms']:.3f} | {best['gb']:.3f} | {at} | {pct} | "
                     f"{best['prefill_ms']:.2f} | {tps} |")
        head_roof = best["head_gb"] / read_gbps * 1e3 if read_gbps else None
        head_pct = f"{head_roof / best['head_ms'] * 100:.0f} %" if head_roof and best["head_ms"] else "–"
        head_at = f"{head_roof:.3f}" if head_roof else "–"
        lines.append(f"| {name} output head (39424 × 5120) | {best['head_ms']:.3f} | {best['head_gb']:.3f} | "
                     f"{head_at} | {head_pct} | | |")
        report.setdefault("per_layer", {})[name] = best
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=str(ROOT / "target" / "cuda" / "release" / "ziya-visual"))
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/gpu-check")))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu-check-models"))
    ap.add_argument("--models", help="reuse DIR/13b-l2 and DIR/13b-l4 instead of writing them")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5, help="prefills timed per run (the median counts)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-ids", action="store_true")
    ap.add_argument("--skip-layers", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = cuda_env()
    binary = str(Path(args.bin).resolve())
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "binary": binary}
    rc, smi, _, _ = run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], env, 30)
    report["nvidia_smi"] = smi.strip() if rc == 0 else None
    say(f"GPU: {report['nvidia_smi']}")
    tables = []
    models, writers = start_models(args) if not args.skip_layers else (None, [])
    ok = True
    if not args.skip_ids:
        say("1. token ids against HF transformers (tiny checkpoint)")
        ok, lines = check_ids(binary, env, report)
        tables += ["## Token ids (same prefix as HF's greedy ids / tokens)", *lines, ""]
    say("2. roof")
    read_gbps = roof(report)
    if not args.skip_layers:
        say("3. 13B-shaped layers")
        if not finish_models(writers):
            say("  writing the models failed")
            ok = False
        lines = bench_layers(binary, env, args, models, read_gbps, report)
        roof_line = f"roof {read_gbps:.0f} GB/s read (torch sum)" if read_gbps else "no roof measured"
        tables += [f"## 13B-shaped layers on {report['nvidia_smi']} ({roof_line})", *lines, ""]
    report["ok"] = ok
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu-check.md").write_text("\n".join(tables) + "\n")
    (args.out / "gpu-check.log").write_text("\n".join(LOG) + "\n")
    print("\n".join(tables))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
