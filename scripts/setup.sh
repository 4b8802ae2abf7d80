#!/usr/bin/env bash
# One-shot, idempotent set-up: system packages, then .venv/ with the project installed editable.
# Fails loudly (set -e, and an explicit check) when a system package cannot be had.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config build-essential git)
PYTHON=${PYTHON:-python3.11}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || { echo "setup: ERROR: system package '$p' is not installed and could not be installed" >&2; exit 1; }
done
pkg-config --exists opencv4 || { echo "setup: ERROR: pkg-config cannot find opencv4 (libopencv-dev)" >&2; exit 1; }
pkg-config --exists libturbojpeg || { echo "setup: ERROR: pkg-config cannot find libturbojpeg (libturbojpeg0-dev)" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || { echo "setup: ERROR: $PYTHON not found; HIRI-ViT needs Python 3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --progress-bar off)
# torch and torchvision first, pinned exactly: everything after must accept them as they are.
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" -e ".[dev]"
.venv/bin/python -c "import torch, torchvision, timm, ffcv, deepspeed, dvc, mlflow, submitit, fvcore, pycocotools, pydantic, torchmetrics, transformers" \
  || { echo "setup: ERROR: an installed package does not import (see above)" >&2; exit 1; }
# The loaders' numba kernels, compiled once here rather than by the first training job (~15 s).
.venv/bin/python -m pipeline.data.warm_cache \
  || { echo "setup: ERROR: compiling the FFCV loaders' kernels failed (see above)" >&2; exit 1; }
echo "setup: done. Activate with: source .venv/bin/activate"
