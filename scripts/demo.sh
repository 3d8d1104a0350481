#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, then open napari with the SAM 2 widget and
# the synthetic 3-D sample stack. The official weights (sam2.1_hiera_tiny, 156 MB) are downloaded
# on first use; offline, it stops with a message naming the file to fetch and where to put it.
# Arguments go to `napari-sam2 view`, e.g.:
#   bash scripts/demo.sh --checkpoint sam2.1_hiera_tiny.pt     # a checkpoint you already have
#   bash scripts/demo.sh --sample timelapse                     # the 2-D + t sample instead
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/napari-sam2 view "$@"
