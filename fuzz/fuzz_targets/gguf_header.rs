//! GGUF files from anywhere: the header check, then candle's reader and every tensor, the
//! embedded config.json and tokenizer (as `--llm-model FILE.gguf` reads them). Never a panic;
//! nothing allocated beyond what the file holds.
#![no_main]

use std::io::Cursor;

use candle_core::quantized::gguf_file;
use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use ziya_visual::model::gguf::{check_header, CONFIG_KEY, TOKENIZER_KEY};

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    if check_header(&mut c).is_err() {
        return;
    }
    c.set_position(0);
    // A header that passed the check must be one candle reads without trouble.
    let content = gguf_file::Content::read(&mut c).expect("candle reads every header the check accepts");
    for name in content.tensor_infos.keys() {
        if let Ok(t) = content.tensor(&mut c, name, &Device::Cpu) {
            let _ = t.dequantize(&Device::Cpu);
        }
    }
    if let Some(gguf_file::Value::String(cfg)) = content.metadata.get(CONFIG_KEY) {
        if let Ok(cfg) = serde_json::from_str::<ziya_visual::model::config::LlamaConfig>(cfg) {
            if cfg.validate(std::path::Path::new("fuzz.gguf")).is_ok() {
                let _ = ziya_visual::model::shapes::llm_tensors(&cfg);
            }
        }
    }
    if let Some(gguf_file::Value::String(tok)) = content.metadata.get(TOKENIZER_KEY) {
        let _ =
            ziya_visual::tokenizer::ChatTokenizer::from_json_bytes(tok.as_bytes(), std::path::Path::new("fuzz.gguf"));
    }
});
