#!/usr/bin/env bash
# Debian packages the training-corpus renderer (encore.data) needs. Idempotent; skipped when not root or
# apt is absent (the data tests then skip). libfluidsynth3 backs pyfluidsynth; abcmidi and mma are programs
# the source builders call; FluidR3 + MuseScore Lite are the corpus soundfonts, TimGM6mb (6 MB) is for tests.
set -euo pipefail
PKGS=(libfluidsynth3 fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small abcmidi mma)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "setup-data: missing Debian packages ${missing[*]} (need root + apt-get); data tests will skip" >&2
    exit 0
  fi
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi
# MMA needs its groove database built once; it is written under /usr/share/mma, so only root can do it.
if command -v mma >/dev/null && [ "$(id -u)" = 0 ]; then
  db=$(find /usr/share/mma/lib -name '.mmaDB' -print -quit 2>/dev/null || true)
  if [ -z "$db" ]; then mma -G >/dev/null 2>&1 || echo "setup-data: 'mma -G' failed" >&2; fi
fi
