#!/usr/bin/env python3
"""Records and tabulates the runs of scripts/bench-vs-llamacpp.sh (standard library only).

    summarize.py ours  --fmt q4k --layers 2 [--depth 0] --round 1 < bench-llm.json    >> raw.jsonl
    summarize.py llama --fmt q4k --layers 2 [--depth 0] --round 1 < llama-bench.json  >> raw.jsonl
    summarize.py roof  --round 1 < bench-llm-roof.json                    >> raw.jsonl
    summarize.py table raw.jsonl [--machine TEXT]

Per 13B layer = (time with 4 layers - time with 2 layers) / 2, from the medians over rounds of
each side; everything that is not a layer (embedding, final norm, output head, sampling,
framework overhead) cancels. "Fixed" = time with 2 layers - 2 x per-layer: the output head plus
per-token overhead. Ratio = ziya-visual ms / llama.cpp ms (2.0: llama.cpp decodes twice as many
tokens per second). % of roof = (bytes read / read bandwidth) / measured time. With runs at
several depths (positions in the cache before decoding), the main tables use the smallest and a
last table sets each depth's per-layer decode against it.
"""
import argparse
import json
import statistics
import sys

HIDDEN, INTERMEDIATE, VOCAB = 5120, 13824, 39424
LAYER_PARAMS = 4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE
HEAD_PARAMS = VOCAB * HIDDEN
# Bytes per weight of each format (ggml block sizes: q8_0 34 B / 32, q6_K 210 / 256, q4_K 144 / 256).
BYTES_PER_WEIGHT = {"f16": 2.0, "q8_0": 34 / 32, "q6k": 210 / 256, "q4k": 144 / 256}
ORDER = ["q4k", "q6k", "q8_0", "f16"]


def record(args):
    text = sys.stdin.read()
    base = {"side": args.cmd, "round": args.round}
    if args.cmd == "roof":
        r = json.loads(text.strip().splitlines()[-1])
        print(json.dumps({**base, "read_gbps": r["read_gbps"], "threads": r["threads"]}))
        return
    base.update({"fmt": args.fmt, "layers": args.layers, "depth": args.depth})
    if args.cmd == "ours":
        r = json.loads(text.strip().splitlines()[-1])
        print(json.dumps({**base, "decode_ms": r["ms_per_token"], "decode_ms_median": r["ms_per_token_median"],
                          "prefill_tokens": r["prefill_tokens"], "prefill_ms": r["prefill_s"] * 1e3,
                          "head_ms": r["head_ms"], "bytes_per_token": r["weight_bytes_per_token"],
                          "load_s": r["load_s"], "threads": r["threads"]}))
    else:  # llama-bench -o json: one object per test (pp then tg)
        out = {**base}
        for t in json.loads(text):
            if t["n_gen"] > 0:
                out["decode_ms"] = t["avg_ns"] / t["n_gen"] / 1e6
                out["threads"] = t["n_threads"]
            elif t["n_prompt"] > 0:
                out["prefill_tokens"] = t["n_prompt"]
                out["prefill_ms"] = t["avg_ns"] / 1e6
            out["cpu"] = t.get("cpu_info")
            out["build"] = t.get("build_commit")
        print(json.dumps(out))


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def spread(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    if len(vals) < 2:
        return 0.0
    return (max(vals) - min(vals)) / statistics.median(vals) * 100


def fmt_ms(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def table(args):
    rows = [json.loads(line) for line in open(args.raw) if line.strip()]
    roofs = [r for r in rows if r["side"] == "roof"]
    roof = med(roofs, "read_gbps")
    depths = sorted({r.get("depth", 0) for r in rows if r["side"] in ("ours", "llama")})
    base_depth = depths[0] if depths else 0
    by_depth = {}
    for r in rows:
        if r["side"] in ("ours", "llama"):
            by_depth.setdefault((r["side"], r["fmt"], r["layers"], r.get("depth", 0)), []).append(r)
    runs = {(s, f, n): rs for (s, f, n, d), rs in by_depth.items() if d == base_depth}
    fmts = [f for f in ORDER if any(k[1] == f for k in runs)]
    rounds = max((r["round"] for r in rows), default=0)
    threads = next((r["threads"] for r in rows if r.get("threads")), "?")
    cpu = next((r["cpu"] for r in rows if r.get("cpu")), None)

    def per_layer(side, f, key):
        a, b = runs.get((side, f, 2)), runs.get((side, f, 4))
        if not a or not b or med(a, key) is None or med(b, key) is None:
            return None, None
        layer = (med(b, key) - med(a, key)) / 2
        return layer, med(a, key) - 2 * layer

    out = []
    if args.machine:
        out.append(f"Machine: {args.machine}.")
    start = "from an empty cache" if base_depth == 0 else f"after {base_depth} positions"
    out.append(f"Medians of {rounds} interleaved rounds, {threads} threads, 64 decoded tokens {start}; "
               f"read-bandwidth roof {fmt_ms(roof)} GB/s (1 GiB sum, {threads} threads, median of "
               f"{len(roofs)}: {', '.join(fmt_ms(r['read_gbps']) for r in roofs)}).")
    out.append("")
    out.append("| per 13B layer, decode | ziya-visual ms | llama.cpp ms | ratio | MB read | ziya % of roof | llama.cpp % of roof |")
    out.append("|---|---|---|---|---|---|---|")
    for f in fmts:
        ours, _ = per_layer("ours", f, "decode_ms")
        peer, _ = per_layer("llama", f, "decode_ms")
        nbytes = LAYER_PARAMS * BYTES_PER_WEIGHT[f]
        roof_ms = nbytes / (roof * 1e9) * 1e3 if roof else None
        pct = lambda t: "–" if (t is None or roof_ms is None or t <= 0) else f"{roof_ms / t * 100:.0f} %"
        ratio = f"{ours / peer:.2f}" if ours and peer and peer > 0 else "–"
        out.append(f"| {f} | {fmt_ms(ours)} | {fmt_ms(peer)} | {ratio} | {nbytes / 1e6:.0f} | {pct(ours)} | {pct(peer)} |")
    out.append("")
    out.append("| output head (39424×5120) + per-token overhead = t(2 layers) − 2 × layer | ziya-visual ms | "
               "llama.cpp ms | ratio | MB read | ziya head alone, ms (% of roof) |")
    out.append("|---|---|---|---|---|---|")
    for f in fmts:
        _, ours = per_layer("ours", f, "decode_ms")
        _, peer = per_layer("llama", f, "decode_ms")
        nbytes = HEAD_PARAMS * BYTES_PER_WEIGHT[f]
        head = med(runs.get(("ours", f, 2), []) + runs.get(("ours", f, 4), []), "head_ms")
        roof_ms = nbytes / (roof * 1e9) * 1e3 if roof else None
        head_txt = "–" if head is None else f"{head:.1f} ({roof_ms / head * 100:.0f} %)" if roof_ms else f"{head:.1f}"
        ratio = f"{ours / peer:.2f}" if ours and peer and peer > 0 else "–"
        out.append(f"| {f} | {fmt_ms(ours)} | {fmt_ms(peer)} | {ratio} | {nbytes / 1e6:.0f} | {head_txt} |")
    have_prefill = any(r.get("prefill_ms") for rs in runs.values() for r in rs)
    if have_prefill:
        n = next(r["prefill_tokens"] for rs in runs.values() for r in rs if r.get("prefill_tokens"))
        out.append("")
        out.append(f"| prefill of {n} tokens (llama-bench -p {n}), per 13B layer | ziya-visual ms | llama.cpp ms | "
                   f"ratio | ziya 40-layer tokens/s | llama.cpp 40-layer tokens/s |")
        out.append("|---|---|---|---|---|---|")
        for f in fmts:
            ours, _ = per_layer("ours", f, "prefill_ms")
            peer, _ = per_layer("llama", f, "prefill_ms")
            tps = lambda t: "–" if not t or t <= 0 else f"{n / (40 * t / 1e3):.1f}"
            ratio = f"{ours / peer:.2f}" if ours and peer and peer > 0 else "–"
            out.append(f"| {f} | {fmt_ms(ours, 0)} | {fmt_ms(peer, 0)} | {ratio} | {tps(ours)} | {tps(peer)} |")
    out.append("")
    out.append("Raw medians (ms per decoded token; spread = (max − min) / median over rounds):")
    out.append("")
    out.append("| format | side | 2 layers | spread | 4 layers | spread |")
    out.append("|---|---|---|---|---|---|")
    for f in fmts:
        for side in ("ours", "llama"):
            a, b = runs.get((side, f, 2), []), runs.get((side, f, 4), [])
            name = "ziya-visual" if side == "ours" else "llama.cpp"
            out.append(f"| {f} | {name} | {fmt_ms(med(a, 'decode_ms'))} | {spread(a, 'decode_ms'):.0f} % | "
                       f"{fmt_ms(med(b, 'decode_ms'))} | {spread(b, 'decode_ms'):.0f} % |")
    if len(depths) > 1:
        out.append("")
        out.append(f"| decode per 13B layer at a depth, against depth {base_depth} | depth | ziya-visual ms | ratio | "
                   "llama.cpp ms | ratio |")
        out.append("|---|---|---|---|---|---|")
        for f in fmts:
            def layer_at(side, d):
                a, b = by_depth.get((side, f, 2, d)), by_depth.get((side, f, 4, d))
                if not a or not b:
                    return None
                return (med(b, "decode_ms") - med(a, "decode_ms")) / 2
            base = {side: layer_at(side, base_depth) for side in ("ours", "llama")}
            for d in depths:
                cells = []
                for side in ("ours", "llama"):
                    t = layer_at(side, d)
                    ratio = f"{t / base[side]:.3f}" if t and base[side] and base[side] > 0 else "–"
                    cells += [fmt_ms(t), ratio]
                out.append(f"| {f} | {d} | " + " | ".join(cells) + " |")
    if cpu:
        out.append("")
        out.append(f"llama.cpp build {next((r['build'] for r in rows if r.get('build')), '?')}, cpu_info: {cpu}.")
    print("\n".join(out))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("ours", "llama"):
        p = sub.add_parser(name)
        p.add_argument("--fmt", required=True)
        p.add_argument("--layers", type=int, required=True)
        p.add_argument("--depth", type=int, default=0)
        p.add_argument("--round", type=int, required=True)
    p = sub.add_parser("roof")
    p.add_argument("--round", type=int, required=True)
    p = sub.add_parser("table")
    p.add_argument("raw")
    p.add_argument("--machine")
    args = ap.parse_args()
    table(args) if args.cmd == "table" else record(args)


if __name__ == "__main__":
    main()
