//! The published-delta path on a tiny base/delta pair in the real layout (float16 .bin shards,
//! the base with the smaller vocabulary), against the reference merge done as Fengshenbang's
//! apply_delta.py does it: merged tensors bit for bit, and the merged model's answers both when
//! merging while loading and from the merged folder.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::*;

fn delta_dirs() -> (PathBuf, PathBuf) {
    let d = fixtures().join("delta");
    (d.join("llama-base"), d.join("ziya-delta"))
}

/// The merged model's answer to the question the generator used for it.
fn ask(llm: &[&OsStr]) -> Value {
    Ask::new().vision_and(&vision_dir(), llm).greedy(24).image(&image_path("photo_odd.png")).json("这张图片里有什么？")
}

fn sha256_f16_bytes(path: &Path, name: &str) -> String {
    let tensors = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
    let t = &tensors[name];
    let bytes: Vec<u8> = match t.dtype() {
        candle_core::DType::F16 => {
            t.flatten_all().unwrap().to_vec1::<half::f16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        _ => t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
    };
    ziya_visual::chat::content_hash(&bytes)
}

#[test]
fn merge_delta_writes_base_plus_delta_bit_for_bit() {
    let (base, delta) = delta_dirs();
    let out = tempfile::tempdir().unwrap();
    let status = bin()
        .args(["merge-delta", "--base"])
        .arg(&base)
        .arg("--delta")
        .arg(&delta)
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stderr).contains("tensors"), "a progress line");
    let file = out.path().join("model.safetensors");
    let digests = &cases().delta.merged_sha256_f16;
    assert!(digests.len() > 20);
    for (name, want) in digests {
        assert_eq!(&sha256_f16_bytes(&file, name), want, "{name}");
    }
    for f in ["config.json", "tokenizer.json"] {
        assert!(out.path().join(f).is_file(), "{f} copied from the delta");
    }
    // The merged folder answers like the reference merged model.
    let j = ask(&[OsStr::new("--llm-model"), out.path().as_os_str()]);
    assert_eq!(ids(&j["token_ids"]), cases().delta.single.token_ids);
}

#[test]
fn base_and_delta_merged_while_loading_answer_like_the_merged_model() {
    let (base, delta) = delta_dirs();
    let j = ask(&[OsStr::new("--llm-base"), base.as_os_str(), OsStr::new("--llm-delta"), delta.as_os_str()]);
    assert_eq!(ids(&j["token_ids"]), cases().delta.single.token_ids);
    assert_eq!(j["text"], cases().delta.single.text.as_str());
}

fn rewrite_base(from: &Path, to: &Path, change: impl Fn(&mut std::collections::HashMap<String, candle_core::Tensor>)) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("config.json"), to.join("config.json")).unwrap();
    let mut all = std::collections::HashMap::new();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "bin") {
            for (name, t) in candle_core::pickle::read_all(&p).unwrap() {
                all.insert(name, t);
            }
        }
    }
    change(&mut all);
    candle_core::safetensors::save(&all, to.join("model.safetensors")).unwrap();
}

#[test]
fn a_base_that_does_not_match_the_delta_is_named() {
    let (base, delta) = delta_dirs();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    rewrite_base(&base, &missing, |m| {
        m.remove("model.layers.1.mlp.up_proj.weight");
    });
    let reshaped = dir.path().join("reshaped");
    rewrite_base(&base, &reshaped, |m| {
        let t = m.remove("model.layers.0.self_attn.o_proj.weight").unwrap();
        m.insert("model.layers.0.self_attn.o_proj.weight".into(), t.narrow(0, 0, 128).unwrap());
    });
    for (b, needles) in [
        (&missing, vec!["model.layers.1.mlp.up_proj.weight", "missing from the base"]),
        (&reshaped, vec!["model.layers.0.self_attn.o_proj.weight", "shape"]),
    ] {
        let out = Ask::new()
            .vision_and(
                &vision_dir(),
                &[OsStr::new("--llm-base"), b.as_os_str(), OsStr::new("--llm-delta"), delta.as_os_str()],
            )
            .run("q");
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        for n in needles {
            assert!(err.contains(n), "{err}");
        }
    }
}
