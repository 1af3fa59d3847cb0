#!/usr/bin/env bash
# Installs what building, testing and running ziya-visual needs on a Debian/Ubuntu machine
# (README, "Install"): a C compiler (the JPEG decoder is C), pkg-config, and the libraries the
# window loads at run time (OpenGL through Mesa, X11/Wayland input), and zenity for file
# dialogs. Already-present pieces are skipped, so it is quick to re-run.
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
have_lib() { ldconfig -p 2>/dev/null | grep -q "$1"; }
have_lib 'libGL.so.1 ' || need+=(libgl1)
have_lib 'libEGL.so.1 ' || need+=(libegl1)
[ -e /usr/lib/x86_64-linux-gnu/dri ] || [ -e /usr/lib/aarch64-linux-gnu/dri ] || need+=(libgl1-mesa-dri)
have_lib 'libxkbcommon-x11.so.0 ' || need+=(libxkbcommon-x11-0)
have_lib 'libXcursor.so.1 ' || need+=(libxcursor1)
have_lib 'libXrandr.so.2 ' || need+=(libxrandr2)
have_lib 'libXi.so.6 ' || need+=(libxi6)
have_lib 'libwayland-client.so.0 ' || need+=(libwayland-client0)
# File dialogs: rfd asks xdg-desktop-portal over D-Bus and falls back to zenity; a desktop
# without a portal (a bare X session, a minimal window manager) has neither, so bring zenity.
# (Without both the window still works: it shows its own file dialog and says why.)
command -v zenity >/dev/null || need+=(zenity)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs" >&2; exit 1; }
