//! `ziya-visual quantize` writes a GGUF that loads on its own (config and tokenizer inside) and
//! answers exactly like quantizing the same weights while loading; the published delta can be
//! quantized in one step.

use std::ffi::OsStr;
use std::path::Path;

use crate::common::*;

fn quantize(args: &[&OsStr], out: &Path) {
    let o = bin().arg("quantize").args(args).arg("--out").arg(out).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
}

fn ask_ids(llm: &[&OsStr]) -> Vec<u32> {
    let j =
        Ask::new().vision_and(&vision_dir(), llm).greedy(16).image(&image_path("rgba.png")).json("这张图片里有什么？");
    ids(&j["token_ids"])
}

#[test]
fn a_gguf_on_its_own_answers_like_quantizing_while_loading() {
    for q in ["q8_0", "q4k"] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("ziya-{q}.gguf"));
        quantize(&[OsStr::new("--llm-model"), llm_dir().as_os_str(), OsStr::new("--quant"), OsStr::new(q)], &file);
        // Alone in its folder: config and tokenizer come from inside the file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let from_gguf = ask_ids(&[OsStr::new("--llm-model"), file.as_os_str()]);
        let at_load =
            ask_ids(&[OsStr::new("--llm-model"), llm_dir().as_os_str(), OsStr::new("--quant"), OsStr::new(q)]);
        assert_eq!(from_gguf, at_load, "{q}");
        // And it is smaller than the f16 folder by about what the format promises.
        let f16: u64 = std::fs::read_dir(llm_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "bin"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        let size = std::fs::metadata(&file).unwrap().len();
        assert!(size < f16, "{q}: {size} bytes vs {f16} for f16");
    }
}

#[test]
fn the_published_delta_quantizes_in_one_step() {
    let d = fixtures().join("delta");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ziya-q8.gguf");
    let (base, delta) = (d.join("llama-base"), d.join("ziya-delta"));
    quantize(
        &[
            OsStr::new("--llm-base"),
            base.as_os_str(),
            OsStr::new("--llm-delta"),
            delta.as_os_str(),
            OsStr::new("--quant"),
            OsStr::new("q8_0"),
        ],
        &file,
    );
    let from_gguf = ask_ids(&[OsStr::new("--llm-model"), file.as_os_str()]);
    let at_load = ask_ids(&[
        OsStr::new("--llm-base"),
        base.as_os_str(),
        OsStr::new("--llm-delta"),
        delta.as_os_str(),
        OsStr::new("--quant"),
        OsStr::new("q8_0"),
    ]);
    assert_eq!(from_gguf, at_load);
}

#[test]
fn a_foreign_gguf_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other.gguf");
    let t = candle_core::quantized::QTensor::quantize(
        &candle_core::Tensor::zeros((4, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        candle_core::quantized::GgmlDType::Q8_0,
    )
    .unwrap();
    let arch = candle_core::quantized::gguf_file::Value::String("llama".into());
    let mut f = std::fs::File::create(&file).unwrap();
    candle_core::quantized::gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("x", &t)]).unwrap();
    drop(f);
    let o = Ask::new().models(&vision_dir(), &file).run("q");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("other.gguf") && err.contains("ziya-visual quantize"), "{err}");
}
