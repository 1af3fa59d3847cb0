//! Every tensor the two configs imply, by name and shape, in the checkpoints' own naming (2023
//! vision names with `q_bias`/`v_bias`, `LlamaForCausalLM` names). Used to write random
//! checkpoints of any size and to size memory before loading.

use super::config::{LlamaConfig, VisionRepoConfig};

pub type TensorList = Vec<(String, Vec<usize>)>;

/// The tensors of the vision repo that the network uses.
pub fn vision_tensors(cfg: &VisionRepoConfig) -> TensorList {
    let v = &cfg.vision_config;
    let q = &cfg.qformer_config;
    let (d, i, p) = (v.hidden_size, v.intermediate_size, v.patch_size);
    let positions = (v.image_size / p).pow(2) + 1;
    let mut t: TensorList = vec![
        ("vision_model.embeddings.class_embedding".into(), vec![1, 1, d]),
        ("vision_model.embeddings.position_embedding".into(), vec![1, positions, d]),
        ("vision_model.embeddings.patch_embedding.weight".into(), vec![d, 3, p, p]),
        ("vision_model.embeddings.patch_embedding.bias".into(), vec![d]),
    ];
    for l in 0..v.num_hidden_layers {
        let pre = format!("vision_model.encoder.layers.{l}");
        t.push((format!("{pre}.self_attn.qkv.weight"), vec![3 * d, d]));
        if v.qkv_bias {
            t.push((format!("{pre}.self_attn.q_bias"), vec![d]));
            t.push((format!("{pre}.self_attn.v_bias"), vec![d]));
        }
        t.push((format!("{pre}.self_attn.projection.weight"), vec![d, d]));
        t.push((format!("{pre}.self_attn.projection.bias"), vec![d]));
        for n in ["layer_norm1", "layer_norm2"] {
            t.push((format!("{pre}.{n}.weight"), vec![d]));
            t.push((format!("{pre}.{n}.bias"), vec![d]));
        }
        t.push((format!("{pre}.mlp.fc1.weight"), vec![i, d]));
        t.push((format!("{pre}.mlp.fc1.bias"), vec![i]));
        t.push((format!("{pre}.mlp.fc2.weight"), vec![d, i]));
        t.push((format!("{pre}.mlp.fc2.bias"), vec![d]));
    }
    t.push(("vision_model.post_layernorm.weight".into(), vec![d]));
    t.push(("vision_model.post_layernorm.bias".into(), vec![d]));

    let (h, qi) = (q.hidden_size, q.intermediate_size);
    t.push(("query_tokens".into(), vec![1, cfg.num_query_tokens, h]));
    t.push(("qformer.layernorm.weight".into(), vec![h]));
    t.push(("qformer.layernorm.bias".into(), vec![h]));
    for l in 0..q.num_hidden_layers {
        let pre = format!("qformer.encoder.layer.{l}");
        let mut block = |name: &str, kv: usize| {
            for part in ["query", "key", "value"] {
                let width = if part == "query" { h } else { kv };
                t.push((format!("{pre}.{name}.attention.{part}.weight"), vec![h, width]));
                t.push((format!("{pre}.{name}.attention.{part}.bias"), vec![h]));
            }
            t.push((format!("{pre}.{name}.output.dense.weight"), vec![h, h]));
            t.push((format!("{pre}.{name}.output.dense.bias"), vec![h]));
            t.push((format!("{pre}.{name}.output.LayerNorm.weight"), vec![h]));
            t.push((format!("{pre}.{name}.output.LayerNorm.bias"), vec![h]));
        };
        block("attention", h);
        if l % q.cross_attention_frequency == 0 {
            block("crossattention", q.encoder_hidden_size);
        }
        t.push((format!("{pre}.intermediate_query.dense.weight"), vec![qi, h]));
        t.push((format!("{pre}.intermediate_query.dense.bias"), vec![qi]));
        t.push((format!("{pre}.output_query.dense.weight"), vec![h, qi]));
        t.push((format!("{pre}.output_query.dense.bias"), vec![h]));
        t.push((format!("{pre}.output_query.LayerNorm.weight"), vec![h]));
        t.push((format!("{pre}.output_query.LayerNorm.bias"), vec![h]));
    }
    t
}

/// The projection into the LLM's embedding space (stored in the vision repo).
pub fn projection_tensors(cfg: &VisionRepoConfig, llm_hidden: usize) -> TensorList {
    let h = cfg.qformer_config.hidden_size;
    vec![
        ("language_projection.weight".into(), vec![llm_hidden, h]),
        ("language_projection.bias".into(), vec![llm_hidden]),
    ]
}

/// The tensors of a `LlamaForCausalLM` checkpoint.
pub fn llm_tensors(cfg: &LlamaConfig) -> TensorList {
    let (d, i, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let kv = cfg.num_kv_heads() * cfg.head_dim();
    let mut t: TensorList = vec![("model.embed_tokens.weight".into(), vec![v, d])];
    for l in 0..cfg.num_hidden_layers {
        let pre = format!("model.layers.{l}");
        t.push((format!("{pre}.self_attn.q_proj.weight"), vec![d, d]));
        t.push((format!("{pre}.self_attn.k_proj.weight"), vec![kv, d]));
        t.push((format!("{pre}.self_attn.v_proj.weight"), vec![kv, d]));
        t.push((format!("{pre}.self_attn.o_proj.weight"), vec![d, d]));
        t.push((format!("{pre}.mlp.gate_proj.weight"), vec![i, d]));
        t.push((format!("{pre}.mlp.up_proj.weight"), vec![i, d]));
        t.push((format!("{pre}.mlp.down_proj.weight"), vec![d, i]));
        t.push((format!("{pre}.input_layernorm.weight"), vec![d]));
        t.push((format!("{pre}.post_attention_layernorm.weight"), vec![d]));
    }
    t.push(("model.norm.weight".into(), vec![d]));
    if !cfg.tie_word_embeddings {
        t.push(("lm_head.weight".into(), vec![v, d]));
    }
    t
}

pub fn element_count(list: &TensorList) -> u64 {
    list.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::weights::{Checkpoint, LoadCounter};
    use std::path::PathBuf;
    use std::sync::Arc;

    #[test]
    fn the_lists_match_the_real_layout_of_the_tiny_checkpoint() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/tiny-ziya");
        let vcfg = crate::model::read_vision_config(&root.join("vision")).unwrap();
        let lcfg = crate::model::read_llm_config(&root.join("llm")).unwrap();
        let vckpt = Checkpoint::open_dir(&root.join("vision"), Arc::new(LoadCounter::default())).unwrap();
        let lckpt = Checkpoint::open_dir(&root.join("llm"), Arc::new(LoadCounter::default())).unwrap();
        let mut vision = vision_tensors(&vcfg);
        vision.extend(projection_tensors(&vcfg, lcfg.hidden_size));
        for (name, shape) in &vision {
            assert_eq!(vckpt.shape(name).map(|s| s.dims().to_vec()), Some(shape.clone()), "{name}");
        }
        // Everything the vision file holds beyond the list is the Q-Former's unused text path.
        for name in vckpt.names() {
            let listed = vision.iter().any(|(n, _)| n == name);
            assert!(listed || name.contains(".intermediate.") || name.contains(".output."), "unlisted {name}");
        }
        let llm = llm_tensors(&lcfg);
        assert_eq!(llm.len(), lckpt.names().count(), "every LLM tensor is listed");
        for (name, shape) in &llm {
            assert_eq!(lckpt.shape(name).map(|s| s.dims().to_vec()), Some(shape.clone()), "{name}");
        }
    }
}
