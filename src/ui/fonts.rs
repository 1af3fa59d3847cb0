//! Chinese text on machines without CJK fonts: a subset of Noto Sans CJK SC is bundled and served
//! by a font provider installed after eframe's system-font provider, so an installed CJK font is
//! used when there is one and the bundled font only fills what nothing else can draw.

use std::sync::Arc;

use egui::epaint::text::{FallbackRequest, FontData, FontInsert, FontPriority, FontProvider, InsertFontFamily};
use egui::FontFamily;
use skrifa::{FontRef, MetadataProvider};

use crate::assets::BUNDLED_CJK_FONT as BUNDLED_CJK;

const NAME: &str = "Noto Sans SC (bundled subset)";

struct BundledCjk {
    data: FontData,
}

impl FontProvider for BundledCjk {
    fn font_for(&self, request: &FallbackRequest<'_>) -> Option<FontInsert> {
        if !bundled_covers(request.cluster.chars().next()?) {
            return None;
        }
        let families = [FontFamily::Proportional, FontFamily::Monospace]
            .into_iter()
            .map(|family| InsertFontFamily { family, priority: FontPriority::Lowest })
            .collect();
        Some(FontInsert::new(NAME, self.data.clone(), families))
    }
}

/// Installs the bundled CJK fallback (after any provider already installed).
pub fn install(ctx: &egui::Context) {
    ctx.add_font_provider(Arc::new(BundledCjk { data: FontData::from_static(BUNDLED_CJK) }));
}

/// Whether the bundled font can draw `ch`.
pub fn bundled_covers(ch: char) -> bool {
    FontRef::new(BUNDLED_CJK).ok().and_then(|f| f.charmap().map(ch)).is_some()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_font_covers_common_chinese() {
        for ch in "这张图片里有什么？请讲一个故事。猫咪、夜景，“你好”！".chars() {
            assert!(super::bundled_covers(ch), "{ch}");
        }
    }
}
