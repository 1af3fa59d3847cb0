//! Chinese text on machines without CJK fonts: a subset of Noto Sans CJK SC is bundled and served
//! by a font provider installed after eframe's system-font provider, so an installed CJK font is
//! used when there is one and the bundled font only fills what nothing else can draw. A tiny
//! symbol subset does the same for the few icons egui_commonmark draws (a code block's copy
//! button), which no font egui ships has.

use std::sync::Arc;

use egui::epaint::text::{FallbackRequest, FontData, FontInsert, FontPriority, FontProvider, InsertFontFamily};
use egui::FontFamily;
use skrifa::{FontRef, MetadataProvider};

use crate::assets::{BUNDLED_CJK_FONT as BUNDLED_CJK, BUNDLED_SYMBOLS_FONT};

/// A bundled font offered for the characters it covers that nothing installed before could draw.
struct Bundled {
    name: &'static str,
    bytes: &'static [u8],
    data: FontData,
}

impl FontProvider for Bundled {
    fn font_for(&self, request: &FallbackRequest<'_>) -> Option<FontInsert> {
        if !covers(self.bytes, request.cluster.chars().next()?) {
            return None;
        }
        let families = [FontFamily::Proportional, FontFamily::Monospace]
            .into_iter()
            .map(|family| InsertFontFamily { family, priority: FontPriority::Lowest })
            .collect();
        Some(FontInsert::new(self.name, self.data.clone(), families))
    }
}

/// Installs the bundled fallbacks (after any provider already installed).
pub fn install(ctx: &egui::Context) {
    for (name, bytes) in
        [("Noto Sans SC (bundled subset)", BUNDLED_CJK), ("Noto Sans Symbols2 (bundled subset)", BUNDLED_SYMBOLS_FONT)]
    {
        ctx.add_font_provider(Arc::new(Bundled { name, bytes, data: FontData::from_static(bytes) }));
    }
}

fn covers(font: &[u8], ch: char) -> bool {
    FontRef::new(font).ok().and_then(|f| f.charmap().map(ch)).is_some()
}

/// Whether the bundled CJK font can draw `ch`.
pub fn bundled_covers(ch: char) -> bool {
    covers(BUNDLED_CJK, ch)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_symbols_egui_commonmark_draws_are_covered() {
        for ch in "🗐✔".chars() {
            assert!(super::covers(crate::assets::BUNDLED_SYMBOLS_FONT, ch), "{ch}");
        }
    }

    #[test]
    fn the_bundled_font_covers_common_chinese() {
        for ch in "这张图片里有什么？请讲一个故事。猫咪、夜景，“你好”！".chars() {
            assert!(super::bundled_covers(ch), "{ch}");
        }
    }
}
