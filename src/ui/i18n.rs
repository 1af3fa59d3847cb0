//! The UI's words in Chinese and English, chosen from the system locale and switchable in
//! settings.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Lang {
    Zh,
    En,
}

impl Lang {
    /// Chinese when the system locale is Chinese, English otherwise.
    pub fn from_system() -> Self {
        match sys_locale::get_locale() {
            Some(l) if l.to_lowercase().starts_with("zh") => Lang::Zh,
            _ => Lang::En,
        }
    }

    pub fn tr(self) -> &'static Tr {
        match self {
            Lang::Zh => &ZH,
            Lang::En => &EN,
        }
    }
}

/// Every string the UI shows. `{}` marks where a value goes (see [`fill`]).
pub struct Tr {
    pub new_chat: &'static str,
    pub conversations: &'static str,
    pub no_conversations: &'static str,
    pub send: &'static str,
    pub stop: &'static str,
    pub attach: &'static str,
    pub regenerate: &'static str,
    pub copy: &'static str,
    pub edit: &'static str,
    pub delete: &'static str,
    pub save_edit: &'static str,
    pub cancel: &'static str,
    pub composer_hint: &'static str,
    pub why_no_model: &'static str,
    pub why_loading: &'static str,
    pub why_busy: &'static str,
    pub why_empty: &'static str,
    pub why_attachments_loading: &'static str,
    pub drop_here: &'static str,
    pub not_an_image: &'static str,
    pub cannot_read: &'static str,
    pub model: &'static str,
    pub vision_folder: &'static str,
    pub llm_folder: &'static str,
    pub delta_folder: &'static str,
    pub use_delta: &'static str,
    pub base_folder: &'static str,
    pub gguf_hint: &'static str,
    pub browse: &'static str,
    pub device: &'static str,
    pub precision: &'static str,
    pub quantization: &'static str,
    pub memory_estimate: &'static str,
    pub memory_estimate_free: &'static str,
    pub no_quantization: &'static str,
    pub load: &'static str,
    pub unload: &'static str,
    pub loading: &'static str,
    pub load_failed: &'static str,
    pub where_models_come_from: &'static str,
    pub try_demo: &'static str,
    pub demo_warning: &'static str,
    pub demo_badge: &'static str,
    pub settings: &'static str,
    pub temperature: &'static str,
    pub top_p: &'static str,
    pub top_k: &'static str,
    pub max_new_tokens: &'static str,
    pub repeat_penalty: &'static str,
    pub seed: &'static str,
    pub fixed_seed: &'static str,
    pub reset_defaults: &'static str,
    pub language: &'static str,
    pub no_model: &'static str,
    pub stopped: &'static str,
    pub answer_failed: &'static str,
    pub image_missing: &'static str,
    pub thinking: &'static str,
    pub memory: &'static str,
    pub dismiss: &'static str,
    pub show_panel: &'static str,
    pub open_session: &'static str,
    pub save_as: &'static str,
    pub export_markdown: &'static str,
    pub export_html: &'static str,
    pub rename: &'static str,
    pub images_count: &'static str,
    pub saved_to: &'static str,
    pub earlier_turns_hidden: &'static str,
    pub context_meter: &'static str,
    pub will_drop_turns: &'static str,
    pub question_too_long: &'static str,
}

/// Replaces each `{}` in `template` with the next value.
pub fn fill(template: &str, values: &[&dyn std::fmt::Display]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    for v in values {
        match rest.find("{}") {
            Some(i) => {
                out.push_str(&rest[..i]);
                out.push_str(&v.to_string());
                rest = &rest[i + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

pub static ZH: Tr = Tr {
    new_chat: "新对话",
    conversations: "对话",
    no_conversations: "还没有保存的对话",
    send: "发送",
    stop: "停止",
    attach: "添加图片",
    regenerate: "重新生成",
    copy: "复制",
    edit: "编辑",
    delete: "删除",
    save_edit: "保存并重新生成",
    cancel: "取消",
    composer_hint: "询问关于图片的问题…（Enter 发送，Shift+Enter 换行）",
    why_no_model: "请先在右侧的模型面板加载模型",
    why_loading: "模型加载中…",
    why_busy: "正在回答，完成后或按“停止”再发送",
    why_empty: "请输入问题",
    why_attachments_loading: "图片仍在读取中…",
    drop_here: "松开以添加图片",
    not_an_image: "{} 不是可用的图片：{}",
    cannot_read: "无法读取 {}：{}",
    model: "模型",
    vision_folder: "视觉模型文件夹（Ziya-BLIP2-14B-Visual-v1）",
    llm_folder: "语言模型文件夹（Ziya-LLaMA-13B-v1，已合并）",
    delta_folder: "Ziya-LLaMA-13B-v1 增量（delta）文件夹",
    use_delta: "这是官方发布的增量：加载时与 LLaMA-13B 合并",
    base_folder: "Meta 的 LLaMA-13B 文件夹（HF 格式）",
    gguf_hint: "选择 ziya-visual quantize 生成的 .gguf 文件（已量化，启动更快）",
    browse: "浏览…",
    device: "设备",
    precision: "精度",
    quantization: "量化（语言模型）",
    memory_estimate: "预计需要内存 {}（整个上下文）",
    memory_estimate_free: "预计需要内存 {}（整个上下文），可用 {}",
    no_quantization: "不量化",
    load: "加载",
    unload: "卸载",
    loading: "加载中… {}",
    load_failed: "加载失败",
    where_models_come_from: "需要两个文件夹（来自 Hugging Face 的 IDEA-CCNL）：\n\
        1. 视觉部分 Ziya-BLIP2-14B-Visual-v1：config.json 和 pytorch_model.bin（4.4 GB）。\n\
        2. 语言模型 Ziya-LLaMA-13B-v1：它以增量形式发布，需先与 Meta 的 LLaMA-13B 合并（Fengshenbang-LM 的 apply_delta.py），\
        文件夹中应有 config.json、权重和 tokenizer.json（或 tokenizer.model）。",
    try_demo: "试用演示模型",
    demo_warning: "演示模型是随机权重的微型模型：它能跑通整个流程，但回答是无意义的噪声。",
    demo_badge: "演示 · 随机权重，回答无意义",
    settings: "生成设置",
    temperature: "温度（0 为贪心）",
    top_p: "Top-p",
    top_k: "Top-k（0 为关闭）",
    max_new_tokens: "最多生成 token 数",
    repeat_penalty: "重复惩罚（1 为关闭）",
    seed: "随机种子",
    fixed_seed: "固定种子",
    reset_defaults: "恢复模型卡默认值",
    language: "界面语言",
    no_model: "未加载模型",
    stopped: "（已停止）",
    answer_failed: "回答失败：{}",
    image_missing: "图片 {} 已丢失",
    thinking: "正在读图…",
    memory: "内存",
    dismiss: "关闭",
    show_panel: "模型与设置",
    open_session: "打开对话…",
    save_as: "另存为…",
    export_markdown: "导出 Markdown…",
    export_html: "导出 HTML…",
    rename: "重命名",
    images_count: "{} 张图片",
    saved_to: "已保存到 {}",
    earlier_turns_hidden: "以上内容模型已看不到",
    context_meter: "上下文 {} / {}",
    will_drop_turns: "发送后，最早的 {} 轮对话将移出模型的视野",
    question_too_long: "这个问题本身就超出了模型的上下文，请缩短问题、减少图片或降低最大生成长度",
};

pub static EN: Tr = Tr {
    new_chat: "New chat",
    conversations: "Conversations",
    no_conversations: "No saved conversations yet",
    send: "Send",
    stop: "Stop",
    attach: "Attach images",
    regenerate: "Regenerate",
    copy: "Copy",
    edit: "Edit",
    delete: "Delete",
    save_edit: "Save & regenerate",
    cancel: "Cancel",
    composer_hint: "Ask about your photos… (Enter to send, Shift+Enter for a new line)",
    why_no_model: "Load a model first (model panel on the right)",
    why_loading: "The model is loading…",
    why_busy: "Wait for the answer to finish, or press Stop",
    why_empty: "Type a question",
    why_attachments_loading: "Images are still being read…",
    drop_here: "Drop to attach images",
    not_an_image: "{} is not a usable image: {}",
    cannot_read: "Cannot read {}: {}",
    model: "Model",
    vision_folder: "Vision folder (Ziya-BLIP2-14B-Visual-v1)",
    llm_folder: "LLM folder (Ziya-LLaMA-13B-v1, merged)",
    delta_folder: "Ziya-LLaMA-13B-v1 delta folder (as published)",
    use_delta: "It is the published delta: merge it with LLaMA-13B while loading",
    base_folder: "Meta's LLaMA-13B folder (HF format)",
    gguf_hint: "Pick a .gguf written by `ziya-visual quantize` (quantized, starts faster)",
    browse: "Browse…",
    device: "Device",
    precision: "Precision",
    quantization: "Quantization (LLM)",
    memory_estimate: "Needs about {} (full context)",
    memory_estimate_free: "Needs about {} (full context); {} free",
    no_quantization: "none",
    load: "Load",
    unload: "Unload",
    loading: "Loading… {}",
    load_failed: "Loading failed",
    where_models_come_from: "You need two folders (IDEA-CCNL on Hugging Face):\n\
        1. Vision: Ziya-BLIP2-14B-Visual-v1 — config.json and pytorch_model.bin (4.4 GB).\n\
        2. LLM: Ziya-LLaMA-13B-v1 — published as a delta, so merge it with Meta's LLaMA-13B first \
        (Fengshenbang-LM's apply_delta.py); the folder needs config.json, the weights and tokenizer.json \
        (or tokenizer.model).",
    try_demo: "Try the demo model",
    demo_warning: "The demo is a tiny model with random weights: the whole flow runs, but its answers are noise.",
    demo_badge: "DEMO · random weights, answers are noise",
    settings: "Generation settings",
    temperature: "Temperature (0 = greedy)",
    top_p: "Top-p",
    top_k: "Top-k (0 = off)",
    max_new_tokens: "Max new tokens",
    repeat_penalty: "Repetition penalty (1 = off)",
    seed: "Seed",
    fixed_seed: "Fixed seed",
    reset_defaults: "Reset to model card defaults",
    language: "Language",
    no_model: "No model loaded",
    stopped: "(stopped)",
    answer_failed: "Answer failed: {}",
    image_missing: "Image {} is missing",
    thinking: "Looking at the images…",
    memory: "memory",
    dismiss: "Dismiss",
    show_panel: "Model & settings",
    open_session: "Open conversation…",
    save_as: "Save as…",
    export_markdown: "Export Markdown…",
    export_html: "Export HTML…",
    rename: "Rename",
    images_count: "{} images",
    saved_to: "Saved to {}",
    earlier_turns_hidden: "Earlier turns are no longer seen by the model",
    context_meter: "Context {} / {}",
    will_drop_turns: "Sending moves the oldest {} turn(s) out of the model's view",
    question_too_long:
        "This question alone does not fit in the model's context: shorten it, use fewer images or lower max new tokens",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_placeholders_in_order() {
        assert_eq!(
            fill(EN.not_an_image, &[&"notes.txt", &"unknown format"]),
            "notes.txt is not a usable image: unknown format"
        );
        assert_eq!(fill("{} of {}", &[&1]), "1 of {}");
    }
}
