#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, then segment a cell of the synthetic sample
# stack with SAM 2. Arguments go to examples/segment_image.py; --checkpoint is required:
#   bash scripts/demo.sh --checkpoint sam2.1_hiera_tiny.pt
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/segment_image.py "$@"
