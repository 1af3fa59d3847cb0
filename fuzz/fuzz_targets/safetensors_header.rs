//! safetensors files from anywhere, through the loader's own mapping: the header check, the
//! safetensors crate's parser, then every tensor read and streamed. Never a panic; nothing
//! read outside the file.
#![no_main]

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use ziya_visual::model::weights::{Checkpoint, LoadCounter};

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, data).unwrap();
    let Ok(ckpt) = Checkpoint::open_files(dir.path(), &[path], Default::default()) else { return };
    let _: &LoadCounter = ckpt.counter();
    for name in ckpt.sorted_names() {
        let _ = ckpt.load(&name, DType::F32, &Device::Cpu);
        let _ = ckpt.for_each_chunk(&name, &mut |_| Ok(()));
    }
});
