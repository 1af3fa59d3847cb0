//! Every kernel against candle's own result and against an f64 reference, for every ISA this
//! CPU has (the scalar fallback always), on random data with odd sizes.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use half::f16;

use crate::model::kernels::{
    self, attention, formats::QK_K, pool::Pool, q8_act, CpuWeight, Epilogue, Format, Isa, KvView,
};

struct Rng(u64);
impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    fn u(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal, with some larger outliers like real activations.
    fn normal(&mut self) -> f32 {
        let s: f32 = (0..4).map(|_| self.u()).sum::<f32>() - 2.0;
        if self.u() < 0.01 {
            s * 8.0
        } else {
            s
        }
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

fn pools() -> Vec<Pool> {
    vec![Pool::new(1), Pool::new(2), Pool::new(3)]
}

/// f64 reference of what the kernel computes: dequantized weights times the *quantized*
/// activations (dequantized), so only float summation order differs. Returns (ref, scale) where
/// scale = sum |w*y| bounds the rounding error.
fn reference(w: &CpuWeight, x: &[f32], n: usize) -> (Vec<f64>, Vec<f64>) {
    let (rows, cols) = (w.rows(), w.cols());
    let wd = w.dequantize();
    // activations as the kernel sees them
    let mut xa = vec![0f64; n * cols];
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        let o = &mut xa[t * cols..(t + 1) * cols];
        match w.format() {
            Format::Q4K | Format::Q6K => {
                let nb = cols / QK_K;
                let (mut qs, mut d, mut bs) = (vec![0i8; cols], vec![0f32; nb], vec![0i16; nb * 16]);
                q8_act::quantize_q8k_scalar(xt, &mut qs, &mut d, &mut bs);
                for i in 0..cols {
                    o[i] = qs[i] as f64 * d[i / QK_K] as f64;
                }
            }
            Format::Q8_0 => {
                let nb = cols / 32;
                let (mut qs, mut d) = (vec![0i8; cols], vec![0f32; nb]);
                q8_act::quantize_q8_0_scalar(xt, &mut qs, &mut d);
                for i in 0..cols {
                    o[i] = qs[i] as f64 * d[i / 32] as f64;
                }
            }
            _ => {
                for i in 0..cols {
                    o[i] = xt[i] as f64;
                }
            }
        }
    }
    let mut r = vec![0f64; n * rows];
    let mut s = vec![0f64; n * rows];
    for t in 0..n {
        for j in 0..rows {
            let wr = &wd[j * cols..(j + 1) * cols];
            let xr = &xa[t * cols..(t + 1) * cols];
            let mut acc = 0f64;
            let mut mag = 0f64;
            for i in 0..cols {
                let p = wr[i] as f64 * xr[i];
                acc += p;
                mag += p.abs();
            }
            r[t * rows + j] = acc;
            s[t * rows + j] = mag;
        }
    }
    (r, s)
}

fn candle_result(w: &CpuWeight, x: &[f32], n: usize) -> Vec<f32> {
    let xt = Tensor::from_vec(x.to_vec(), (n, w.cols()), &Device::Cpu).unwrap();
    let y = if w.format().is_quantized() {
        let mm = QMatMul::from_qtensor(w.to_qtensor().unwrap()).unwrap();
        mm.forward(&xt).unwrap()
    } else {
        let wt = Tensor::from_vec(w.dequantize(), (w.rows(), w.cols()), &Device::Cpu).unwrap();
        xt.matmul(&wt.t().unwrap()).unwrap()
    };
    y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn make_weight(format: Format, rows: usize, cols: usize, seed: u64) -> CpuWeight {
    let mut rng = Rng::new(seed);
    let data = rng.vec(rows * cols, 0.05);
    CpuWeight::from_f32(format, rows, cols, &data).unwrap()
}

/// Checks the kernel for every ISA and pool size against the f64 reference (tight) and candle.
fn check(format: Format, rows: usize, cols: usize, ns: &[usize], seed: u64, pools: &[Pool]) {
    let w = make_weight(format, rows, cols, seed);
    let maxn = *ns.iter().max().unwrap();
    let mut rng = Rng::new(seed + 1);
    let xall = rng.vec(maxn * cols, 1.0);
    for &n in ns {
        let x = &xall[..n * cols];
        let (r, mag) = reference(&w, x, n);
        let cand = candle_result(&w, x, n);
        for isa in Isa::available() {
            for pool in pools {
                let mut out = vec![f32::NAN; n * rows];
                kernels::matmul_with(isa, pool, &w, x, n, &mut out).unwrap();
                if std::env::var("SHOW_ERR").is_ok() {
                    let e = (0..n * rows).map(|i| (out[i] as f64 - r[i]).abs() / mag[i]).fold(0f64, f64::max);
                    let ec =
                        (0..n * rows).map(|i| (out[i] as f64 - cand[i] as f64).abs() / mag[i]).fold(0f64, f64::max);
                    eprintln!("{format:?} {isa:?} {rows}x{cols} n={n} max err/mag: ref {e:.2e} candle {ec:.2e}");
                }
                for i in 0..n * rows {
                    // (b) f64 reference on the same quantized values: only f32 rounding differs
                    let tol = 2e-6 * mag[i] + 1e-7;
                    assert!(
                        (out[i] as f64 - r[i]).abs() <= tol,
                        "{format:?} {isa:?} threads={} {rows}x{cols} n={n} i={i}: {} vs ref {} (tol {tol})",
                        pool.n_threads(),
                        out[i],
                        r[i]
                    );
                    // (a) candle: q4k/q6k use the same q8_K activations (tight); candle's
                    // x86 q8_0 path quantizes activations to q8_K instead of q8_0 (looser);
                    // dense: f32 sums in another order.
                    let ctol = match format {
                        Format::Q8_0 if rows.is_multiple_of(16) => 2e-2 * mag[i] + 1e-5,
                        _ => 5e-6 * mag[i] + 1e-7,
                    };
                    assert!(
                        (out[i] - cand[i]).abs() as f64 <= ctol,
                        "{format:?} {isa:?} {rows}x{cols} n={n} i={i}: {} vs candle {} (tol {ctol})",
                        out[i],
                        cand[i]
                    );
                }
            }
        }
    }
}

#[test]
fn isas_on_this_machine() {
    let av = Isa::available();
    eprintln!("available ISAs: {av:?}, detected: {:?}", Isa::detect());
    assert!(av.contains(&Isa::Scalar));
}

#[test]
fn q4k_matmul() {
    let p = pools();
    check(Format::Q4K, 37, 256, &[1, 2, 3, 7, 17, 64], 1, &p);
    check(Format::Q4K, 67, 512, &[1, 2, 3, 7, 17], 2, &p);
    check(Format::Q4K, 19, 5120, &[1, 3, 7, 17, 64], 3, &p);
    check(Format::Q4K, 9, 13824, &[1, 2, 17], 4, &p[1..2]);
    check(Format::Q4K, 1, 512, &[1, 7], 5, &p);
    // rows a multiple of 16: candle takes its repacked (VNNI / AMX) path
    check(Format::Q4K, 32, 512, &[1, 3, 64], 6, &p[1..2]);
}

#[test]
fn q6k_matmul() {
    let p = pools();
    check(Format::Q6K, 37, 256, &[1, 2, 3, 7, 17, 64], 11, &p);
    check(Format::Q6K, 67, 512, &[1, 2, 3, 7, 17], 12, &p);
    check(Format::Q6K, 19, 5120, &[1, 3, 7, 17, 64], 13, &p);
    check(Format::Q6K, 9, 13824, &[1, 2, 17], 14, &p[1..2]);
    check(Format::Q6K, 1, 256, &[1, 7], 15, &p);
    check(Format::Q6K, 32, 512, &[1, 3, 64], 16, &p[1..2]);
}

#[test]
fn q8_0_matmul() {
    let p = pools();
    check(Format::Q8_0, 37, 32, &[1, 2, 3, 7, 17, 64], 21, &p);
    check(Format::Q8_0, 67, 96, &[1, 2, 3, 7, 17], 22, &p);
    check(Format::Q8_0, 19, 544, &[1, 3, 7, 17, 64], 23, &p);
    check(Format::Q8_0, 13, 5120, &[1, 2, 7, 17], 24, &p);
    check(Format::Q8_0, 5, 13824, &[1, 3], 25, &p[1..2]);
    check(Format::Q8_0, 32, 512, &[1, 3, 64], 26, &p[1..2]);
}

#[test]
fn f16_matmul() {
    let p = pools();
    check(Format::F16, 37, 5120, &[1, 2, 3, 7, 17], 31, &p);
    check(Format::F16, 67, 100, &[1, 2, 3, 7, 17, 64], 32, &p);
    check(Format::F16, 5, 33, &[1, 3, 7], 33, &p);
    check(Format::F16, 6, 13824, &[1, 2], 34, &p[1..2]);
    // batched (prefill) dense path: row groups of 32, column chunks of 128 with a partial one
    check(Format::F16, 70, 300, &[24, 31, 64], 35, &p);
    check(Format::F16, 33, 5120, &[64], 36, &p[1..2]);
    // blocks of 8 row groups (600 rows = 19 groups: 8 + 8 + 3 on one thread) and a partial
    // token tile (37 = 3 x 12 + 1)
    check(Format::F16, 600, 300, &[24, 37], 37, &p);
}

#[test]
fn f32_matmul() {
    let p = pools();
    check(Format::F32, 37, 5120, &[1, 2, 3, 7, 17], 41, &p);
    check(Format::F32, 67, 100, &[1, 2, 3, 7, 17, 64], 42, &p);
    check(Format::F32, 5, 33, &[1, 3, 7], 43, &p);
    check(Format::F32, 70, 300, &[24, 31, 64], 44, &p);
    check(Format::F32, 600, 300, &[24, 37], 45, &p);
}

#[test]
fn quantize_bytes_equal_candle() {
    for (format, dt) in [(Format::Q4K, GgmlDType::Q4K), (Format::Q6K, GgmlDType::Q6K), (Format::Q8_0, GgmlDType::Q8_0)]
    {
        for (rows, cols) in [(1usize, 256usize), (7, 512), (33, 5120), (3, 13824)] {
            let mut rng = Rng::new((rows * cols) as u64);
            let data = rng.vec(rows * cols, 0.02);
            let w = CpuWeight::from_f32(format, rows, cols, &data).unwrap();
            let t = Tensor::from_vec(data.clone(), (rows, cols), &Device::Cpu).unwrap();
            let qt = QTensor::quantize(&t, dt).unwrap();
            let cb = qt.data().unwrap();
            assert_eq!(w.bytes(), &cb[..], "{format:?} {rows}x{cols}");
            // and through from_qtensor
            let w2 = CpuWeight::from_qtensor(&qt).unwrap();
            assert_eq!(w2.bytes(), w.bytes());
            assert_eq!((w2.rows(), w2.cols(), w2.format()), (rows, cols, format));
            // dequantization agrees with candle's
            let dq = qt.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(w.dequantize(), dq, "{format:?} dequantize");
            assert_eq!(w.bytes().as_ptr() as usize % 64, 0);
        }
    }
    // from_bytes validates the length
    assert!(CpuWeight::from_bytes(Format::Q4K, 2, 256, &[0u8; 287]).is_err());
    assert!(CpuWeight::from_bytes(Format::Q4K, 2, 256, &[0u8; 288]).is_ok());
    assert!(CpuWeight::from_f32(Format::Q4K, 1, 100, &[0.0; 100]).is_err());
}

#[test]
fn dense_from_tensor() {
    let mut rng = Rng::new(99);
    let data = rng.vec(6 * 40, 1.0);
    let t = Tensor::from_vec(data.clone(), (6, 40), &Device::Cpu).unwrap();
    let w = CpuWeight::from_tensor(&t.to_dtype(candle_core::DType::F16).unwrap()).unwrap();
    assert_eq!(w.format(), Format::F16);
    let expect: Vec<f32> = data.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
    assert_eq!(w.dequantize(), expect);
    let w = CpuWeight::from_tensor(&t).unwrap();
    assert_eq!(w.format(), Format::F32);
    assert_eq!(w.dequantize(), data);
}

#[test]
fn errors_on_bad_sizes() {
    let w = make_weight(Format::Q4K, 4, 256, 5);
    let mut out = vec![0f32; 4];
    assert!(kernels::matmul(&w, &[0.0; 255], 1, &mut out).is_err());
    assert!(kernels::matmul(&w, &[0.0; 256], 1, &mut out[..3]).is_err());
    assert!(kernels::matmul(&w, &[0.0; 256], 1, &mut out).is_ok());
}

// ------------------------------------------------------------------------- attention

#[allow(clippy::too_many_arguments)]
fn attn_ref(
    q: &[f32],
    heads: usize,
    kv: &[f64],
    vv: &[f64],
    kvh: usize,
    cap: usize,
    hd: usize,
    len: usize,
    scale: f64,
) -> Vec<f64> {
    let group = heads / kvh;
    let mut out = vec![0f64; heads * hd];
    for h in 0..heads {
        let g = h / group;
        let s: Vec<f64> = (0..len)
            .map(|j| (0..hd).map(|i| q[h * hd + i] as f64 * kv[(g * cap + j) * hd + i]).sum::<f64>() * scale)
            .collect();
        let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for j in 0..len {
            for i in 0..hd {
                out[h * hd + i] += e[j] / sum * vv[(g * cap + j) * hd + i];
            }
        }
    }
    out
}

#[test]
fn attention_matches_f64() {
    let pools = pools();
    for &(heads, kvh, hd, cap, len) in &[
        (4usize, 4usize, 128usize, 64usize, 1usize),
        (4, 4, 128, 64, 50),
        (6, 2, 64, 40, 33),
        (3, 3, 80, 20, 7),
        (2, 1, 40, 10, 9),
        (3, 3, 36, 9, 9),
        (40, 40, 128, 1600, 1500),
    ] {
        let mut rng = Rng::new((heads * 1000 + len) as u64);
        let q = rng.vec(heads * hd, 1.0);
        let k32 = rng.vec(kvh * cap * hd, 1.0);
        let v32 = rng.vec(kvh * cap * hd, 1.0);
        let scale = 1.0 / (hd as f32).sqrt();
        for f16cache in [false, true] {
            let (kd, vd): (Vec<f64>, Vec<f64>);
            let k16: Vec<f16> = k32.iter().map(|&v| f16::from_f32(v)).collect();
            let v16: Vec<f16> = v32.iter().map(|&v| f16::from_f32(v)).collect();
            if f16cache {
                kd = k16.iter().map(|v| v.to_f64()).collect();
                vd = v16.iter().map(|v| v.to_f64()).collect();
            } else {
                kd = k32.iter().map(|&v| v as f64).collect();
                vd = v32.iter().map(|&v| v as f64).collect();
            }
            let r = attn_ref(&q, heads, &kd, &vd, kvh, cap, hd, len, scale as f64);
            let (kv, vv) = if f16cache {
                (KvView::f16(&k16, kvh, cap, hd), KvView::f16(&v16, kvh, cap, hd))
            } else {
                (KvView::f32(&k32, kvh, cap, hd), KvView::f32(&v32, kvh, cap, hd))
            };
            for isa in Isa::available() {
                for pool in &pools {
                    let mut out = vec![f32::NAN; heads * hd];
                    attention::attention_decode_isa(isa, pool, &q, heads, &kv, &vv, len, scale, &mut out).unwrap();
                    for h in 0..heads {
                        let row = &r[h * hd..(h + 1) * hd];
                        let m = row.iter().fold(0f64, |a, v| a.max(v.abs()));
                        for i in 0..hd {
                            let e = (out[h * hd + i] as f64 - row[i]).abs();
                            assert!(
                                e <= 1e-5 * m,
                                "attention {isa:?} f16={f16cache} heads={heads} kvh={kvh} hd={hd} len={len} h={h} i={i}: {} vs {} (max {m})",
                                out[h * hd + i],
                                row[i]
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn attention_rejects_bad_args() {
    let k = vec![0f32; 2 * 8 * 16];
    let kv = KvView::f32(&k, 2, 8, 16);
    let q = vec![0f32; 4 * 16];
    let mut out = vec![0f32; 4 * 16];
    assert!(kernels::attention_decode(&q, 4, &kv, &kv, 0, 1.0, &mut out).is_err());
    assert!(kernels::attention_decode(&q, 4, &kv, &kv, 9, 1.0, &mut out).is_err());
    assert!(kernels::attention_decode(&q, 3, &kv, &kv, 8, 1.0, &mut out).is_err());
    assert!(kernels::attention_decode(&q, 4, &kv, &kv, 8, 1.0, &mut out).is_ok());
}

#[test]
fn candle_custom_op() {
    use kernels::CpuMatMul;
    let w = make_weight(Format::Q4K, 48, 512, 77);
    let mut rng = Rng::new(78);
    let x = rng.vec(3 * 512, 1.0);
    let mut expect = vec![0f32; 3 * 48];
    kernels::matmul(&w, &x, 3, &mut expect).unwrap();
    let op = CpuMatMul::new(w);
    let xt = Tensor::from_vec(x.clone(), (1, 3, 512), &Device::Cpu).unwrap();
    let y = xt.apply_op1_no_bwd(&op).unwrap();
    assert_eq!(y.dims(), &[1, 3, 48]);
    assert_eq!(y.flatten_all().unwrap().to_vec1::<f32>().unwrap(), expect);
    // a strided (transposed) input is refused; its contiguous copy works
    let xt2 = Tensor::from_vec(x.clone(), (512, 3), &Device::Cpu).unwrap().t().unwrap();
    assert!(xt2.apply_op1_no_bwd(&op).is_err());
    assert!(xt2.contiguous().unwrap().apply_op1_no_bwd(&op).is_ok());
    // a narrowed (offset) contiguous input
    let xt3 = Tensor::from_vec(x.clone(), (3, 512), &Device::Cpu).unwrap().narrow(0, 1, 2).unwrap();
    let y3 = xt3.apply_op1_no_bwd(&op).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(y3, expect[48..].to_vec());
    // f16 input -> f16 output
    let yh = xt.to_dtype(candle_core::DType::F16).unwrap().apply_op1_no_bwd(&op).unwrap();
    assert_eq!(yh.dtype(), candle_core::DType::F16);
    assert_eq!(yh.dims(), &[1, 3, 48]);
}

#[test]
fn bias_is_added_as_the_product_is_written() {
    use kernels::CpuMatMul;
    let mut rng = Rng::new(91);
    // 70 rows: two full row groups of 32 and a partial one; 3 tokens take the per-row path,
    // 37 the batched one (on AVX-512), for f32 and f16 weights
    for format in [Format::F32, Format::F16] {
        let data = rng.vec(70 * 300, 0.05);
        let w = CpuWeight::from_f32(format, 70, 300, &data).unwrap();
        let bias = rng.vec(70, 1.0);
        let op = CpuMatMul::with_bias(CpuWeight::from_f32(format, 70, 300, &data).unwrap(), bias.clone()).unwrap();
        for n in [3usize, 37] {
            let x = rng.vec(n * 300, 1.0);
            let mut expect = vec![0f32; n * 70];
            kernels::matmul(&w, &x, n, &mut expect).unwrap();
            for row in expect.chunks_exact_mut(70) {
                for (o, b) in row.iter_mut().zip(&bias) {
                    *o += b;
                }
            }
            let xt = Tensor::from_vec(x, (n, 300), &Device::Cpu).unwrap();
            let got = xt.apply_op1_no_bwd(&op).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(got, expect, "{format:?}, {n} tokens");
        }
    }
    let w = CpuWeight::from_f32(Format::F32, 4, 32, &[0.0; 128]).unwrap();
    assert!(CpuMatMul::with_bias(w, vec![0.0; 5]).is_err());
}

/// The epilogue (bias, GELU, residual) fused into the batched dense path as tiles are stored
/// gives the same bits as the product followed by the same steps as passes of their own (the
/// GELU op, an f32 addition), on every path: batched (AVX-512, rows or panels) and per row.
#[test]
fn the_fused_epilogue_gives_the_bits_of_separate_passes() {
    use kernels::{dense::batched, CpuMatMul, GeluErf};
    let mut rng = Rng::new(93);
    // 70 rows: a partial row group (masked stores); 300 columns: two column chunks (the last
    // one stores), 40: a lone chunk (the first is the last); 5 and 37 tokens: per-row and
    // batched paths (any count on panels), with a partial token tile.
    for (rows, cols) in [(70usize, 300usize), (33, 40)] {
        let data = rng.vec(rows * cols, 0.05);
        let bias = rng.vec(rows, 1.0);
        let mut weights = vec![CpuWeight::from_f32(Format::F32, rows, cols, &data).unwrap()];
        weights.push(CpuWeight::from_f32(Format::F16, rows, cols, &data).unwrap());
        if Isa::Avx512.is_available() {
            weights.extend(batched::to_panels(&weights[0], &Pool::new(2)));
        }
        for w in &weights {
            for n in [5usize, 37] {
                let x = rng.vec(n * cols, 1.0);
                let residual = rng.vec(n * rows, 1.0);
                for isa in Isa::available() {
                    let pool = Pool::new(2);
                    let gelu_epi = Epilogue { bias: Some(&bias), gelu: true, residual: None };
                    let got_gelu = kernels::matmul_epilogue_vec(isa, &pool, w, &x, n, &gelu_epi);
                    let plus_epi = Epilogue { bias: Some(&bias), gelu: false, residual: Some(&residual) };
                    let got_plus = kernels::matmul_epilogue_vec(isa, &pool, w, &x, n, &plus_epi);
                    if w.is_panels() && isa != Isa::Avx512 {
                        assert!(got_gelu.is_err() && got_plus.is_err(), "only the batched kernel reads panels");
                        continue;
                    }
                    // Separate passes on the same ISA: product, bias, then the GELU op (the
                    // same arithmetic on every ISA) or the residual.
                    let mut plain = vec![0f32; n * rows];
                    kernels::matmul_with(isa, &pool, w, &x, n, &mut plain).unwrap();
                    for row in plain.chunks_exact_mut(rows) {
                        for (o, b) in row.iter_mut().zip(&bias) {
                            *o += b;
                        }
                    }
                    let t = Tensor::from_vec(plain.clone(), (n, rows), &Device::Cpu).unwrap();
                    let gelu = t.apply_op1_no_bwd(&GeluErf).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
                    let plus: Vec<f32> = plain.iter().zip(&residual).map(|(p, r)| r + p).collect();
                    let what = format!("{:?} {rows}x{cols}, {n} tokens, {isa:?}", w.format());
                    assert_eq!(got_gelu.unwrap(), gelu, "GELU: {what}");
                    assert_eq!(got_plus.unwrap(), plus, "residual: {what}");
                }
            }
        }
        // Through candle: the op with GELU and the op plus a residual.
        let w = CpuWeight::from_f32(Format::F32, rows, cols, &data).unwrap();
        let op = CpuMatMul::with_bias(w, bias.clone()).unwrap();
        let n = 37;
        let xt = Tensor::from_vec(rng.vec(n * cols, 1.0), (1, n, cols), &Device::Cpu).unwrap();
        let rt = Tensor::from_vec(rng.vec(n * rows, 1.0), (1, n, rows), &Device::Cpu).unwrap();
        let y = xt.apply_op1_no_bwd(&op).unwrap();
        let expect_gelu = y.apply_op1_no_bwd(&GeluErf).unwrap();
        let got_gelu = xt.apply_op1_no_bwd(&op.clone().then_gelu()).unwrap();
        assert_eq!(got_gelu.dims(), &[1, n, rows]);
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&got_gelu), flat(&expect_gelu));
        let got_plus = xt.apply_op2_no_bwd(&rt, &op.plus()).unwrap();
        assert_eq!(flat(&got_plus), flat(&(&rt + &y).unwrap()));
        // A residual of another shape, a strided one, f16 tensors: refused, not misread.
        assert!(xt.apply_op2_no_bwd(&rt.narrow(1, 0, n - 1).unwrap(), &op.plus()).is_err());
        let rt_t =
            Tensor::from_vec(rng.vec(n * rows, 1.0), (1, rows, n), &Device::Cpu).unwrap().transpose(1, 2).unwrap();
        assert!(xt.apply_op2_no_bwd(&rt_t, &op.plus()).is_err());
        let half = |t: &Tensor| t.to_dtype(candle_core::DType::F16).unwrap();
        assert!(half(&xt).apply_op2_no_bwd(&half(&rt), &op.plus()).is_err());
        assert!(half(&xt).apply_op1_no_bwd(&op.clone().then_gelu()).is_err());
    }
    // A bias or residual that does not fit the output is an error on every path.
    let w = CpuWeight::from_f32(Format::F32, 4, 32, &[0.0; 128]).unwrap();
    let short = [0f32; 3];
    for n in [1usize, 40] {
        let x = vec![0f32; n * 32];
        let pool = Pool::new(1);
        let bad_bias = Epilogue { bias: Some(&short), ..Epilogue::default() };
        assert!(kernels::matmul_epilogue_vec(Isa::detect(), &pool, &w, &x, n, &bad_bias).is_err());
        let bad_res = Epilogue { residual: Some(&short), ..Epilogue::default() };
        assert!(kernels::matmul_epilogue_vec(Isa::detect(), &pool, &w, &x, n, &bad_res).is_err());
    }
}

#[test]
fn f32_weights_laid_out_as_panels_give_the_batched_products() {
    use kernels::dense::batched;
    if !Isa::Avx512.is_available() {
        return; // the layout is the AVX-512 batched kernel's alone
    }
    let mut rng = Rng::new(92);
    // 70 rows (a partial group of 32), 300 and 40 columns (a partial and a lone short chunk of
    // 256), token counts below and above the batched threshold, on 1-3 threads.
    for (rows, cols) in [(70usize, 300usize), (64, 512), (33, 40)] {
        let data = rng.vec(rows * cols, 0.05);
        let w = CpuWeight::from_f32(Format::F32, rows, cols, &data).unwrap();
        let bias = rng.vec(rows, 1.0);
        for pool in pools() {
            let panels = batched::to_panels(&w, &pool).unwrap();
            assert!(panels.is_panels() && batched::to_panels(&panels, &pool).is_none());
            assert_eq!((panels.rows(), panels.cols()), (rows, cols));
            for n in [1usize, 5, 13, 37] {
                let x = rng.vec(n * cols, 1.0);
                let epi = Epilogue { bias: Some(&bias), ..Epilogue::default() };
                let got = kernels::matmul_epilogue_vec(Isa::Avx512, &pool, &panels, &x, n, &epi).unwrap();
                let mut expect = vec![0f32; n * rows];
                kernels::matmul_epilogue_with(Isa::Avx512, &pool, &w, &x, n, &epi, &mut expect).unwrap();
                if n >= batched::threshold() {
                    // The same kernel on the same panels, packed per block or once at load.
                    assert_eq!(got, expect, "{rows}x{cols}, {n} tokens");
                } else {
                    for (g, e) in got.iter().zip(&expect) {
                        assert!((g - e).abs() <= 1e-4 * (1.0 + e.abs()), "{rows}x{cols}, {n} tokens: {g} vs {e}");
                    }
                }
            }
        }
        // Only the batched path reads panels: the per-row kernels refuse them.
        let panels = batched::to_panels(&w, &Pool::new(1)).unwrap();
        let mut out = vec![0f32; rows];
        assert!(kernels::matmul_isa(Isa::Avx2, &panels, &rng.vec(cols, 1.0), 1, &mut out).is_err());
        assert!(panels.to_qtensor().is_err());
    }
    // f16 weights keep their rows (half the memory; the kernel widens them per block).
    let w = CpuWeight::from_f32(Format::F16, 32, 64, &rng.vec(32 * 64, 0.05)).unwrap();
    assert!(batched::to_panels(&w, &Pool::new(1)).is_none());
}
