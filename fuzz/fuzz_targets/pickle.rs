//! PyTorch checkpoints from anywhere: either a whole zip, or (first byte even) a pickle wrapped
//! in a checkpoint-shaped zip with a small storage, so the fuzzer works on the pickle itself.
//! The tensor table, then every tensor read and streamed. Never a panic; allocations bounded by
//! the file.
#![no_main]

use std::io::Write;

use candle_core::{DType, Device};
use libfuzzer_sys::fuzz_target;
use ziya_visual::model::weights::Checkpoint;

fn wrap(pickle: &[u8]) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pickle).unwrap();
    z.start_file("archive/data/0", opts).unwrap();
    z.write_all(&[7u8; 64]).unwrap();
    z.finish().unwrap();
    out.into_inner()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let bytes = if mode % 2 == 0 { wrap(rest) } else { rest.to_vec() };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pytorch_model.bin");
    std::fs::write(&path, &bytes).unwrap();
    let Ok(ckpt) = Checkpoint::open_files(dir.path(), &[path], Default::default()) else { return };
    for name in ckpt.sorted_names() {
        let _ = ckpt.load(&name, DType::F32, &Device::Cpu);
        let _ = ckpt.for_each_chunk(&name, &mut |_| Ok(()));
    }
});
