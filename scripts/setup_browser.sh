#!/usr/bin/env bash
# Installs the headless browser the browser tests drive (Debian's chromium + chromium-driver, from the package
# registry; nothing is downloaded at test time), and a CJK font so their screenshots show the Chinese text. Only the
# tests need these: the jobs and the served pages do not.
set -euo pipefail
if command -v chromedriver >/dev/null && command -v chromium >/dev/null && fc-list :lang=zh 2>/dev/null | grep -q .; then
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "[setup] the browser tests need chromium + chromium-driver: run as root or install them (apt-get install chromium chromium-driver fonts-wqy-zenhei)" >&2
  exit 2
fi
echo "[setup] installing chromium + chromium-driver + fonts-wqy-zenhei (apt)"
apt_install=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-wqy-zenhei)
"${apt_install[@]}" >/dev/null || { "${SUDO[@]}" apt-get update -q >/dev/null && "${apt_install[@]}" >/dev/null; }
chromium --version
