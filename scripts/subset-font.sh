#!/usr/bin/env bash
# Rebuilds assets/fonts/NotoSansSC-Regular-subset.otf: Noto Sans CJK SC (SIL OFL 1.1, from Debian's
# fonts-noto-cjk) cut down to GB2312 (all 6763 hanzi and its symbols), CJK and general punctuation,
# full-width forms, Latin-1 and the few symbols the UI draws, so Chinese renders on machines without CJK fonts at 1.6 MB.
# Needs apt-get and Python with fonttools (pip install fonttools).
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/assets/fonts/NotoSansSC-Regular-subset.otf"
work=$(mktemp -d)
cd "$work"
apt-get download fonts-noto-cjk
dpkg -x fonts-noto-cjk_*.deb x
python3 - <<'PY'
chars = set()
for hi in range(0xA1, 0xF8):
    for lo in range(0xA1, 0xFF):
        try:
            chars.add(bytes([hi, lo]).decode("gb2312"))
        except UnicodeDecodeError:
            pass
for a, b in [(0x3000, 0x303F), (0xFF00, 0xFFEF), (0x2000, 0x206F), (0x20, 0x7E), (0xA0, 0xFF)]:
    chars.update(chr(c) for c in range(a, b))
# Symbols the UI uses that GB2312 lacks (egui 0.37 ships no symbol font).
chars.update("✓⚠▶◀▷◁⋯✚⬆")
open("chars.txt", "w").write("".join(sorted(c for c in chars if c.isprintable())))
PY
# Face 2 of the collection is Simplified Chinese.
pyftsubset x/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc --font-number=2 --text-file=chars.txt \
  --output-file="$out" --layout-features='' --no-hinting --name-IDs='*'
echo "wrote $out"

# The few symbols that neither egui's fonts nor the CJK subset have, which egui_commonmark draws
# (the code block's copy / copied icons, alert marks): from Noto Sans Symbols2 (SIL OFL 1.1,
# Debian's fonts-noto-core), 2 kB.
sym="$(dirname "$out")/NotoSansSymbols2-subset.ttf"
apt-get download fonts-noto-core
dpkg -x fonts-noto-core_*.deb y
pyftsubset y/usr/share/fonts/truetype/noto/NotoSansSymbols2-Regular.ttf \
  --unicodes="U+1F5D0,U+2714,U+2713,U+26A0" --output-file="$sym" --no-hinting
echo "wrote $sym"
