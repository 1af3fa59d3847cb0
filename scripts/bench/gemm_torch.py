"""torch's x @ w.T (what HF transformers runs) in GFLOP/s on the shapes of benches/gemm.rs."""
import os, time, torch

shapes = [(4224, 1408, 257), (1408, 1408, 257), (6144, 1408, 257), (1408, 6144, 257), (5120, 5120, 512), (13824, 5120, 512)]
if os.environ.get("ZIYA_GEMM_SHAPES"):
    shapes = [tuple(int(v) for v in s.split(",")) for s in os.environ["ZIYA_GEMM_SHAPES"].split(";") if s]
torch.manual_seed(0)
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
for rows, cols, n in shapes:
    # copies past the 300 MB L3, used in turn, as in benches/gemm.rs
    ws = [torch.randn(rows, cols) * 0.05 for _ in range((600 << 20) // (rows * cols * 2) + 1)]
    x = torch.randn(n, cols)
    flops = 2.0 * rows * cols * n
    reps = max(2, min(20, int(2e10 / flops)))
    (x @ ws[0].T)
    best = min((lambda w, t0: (x @ w.T, time.perf_counter() - t0)[1])(ws[i % len(ws)], time.perf_counter()) for i in range(1, reps + 1))
    print(f"{rows:>6} {cols:>6} {n:>5}  {flops / best / 1e9:>10.1f}")
