#!/usr/bin/env bash
# Set up everything the tests need, idempotently: re-running on a ready machine takes seconds.
#
#   .venv/                 python3.11 -m venv (python3 if 3.11 is absent)
#   torch, torchvision     exact pins, installed first (see below)
#   napari-sam2            pip install -e ".[test,all]"; redone only when pyproject.toml changes
#   sam2==1.1.0            Meta's reference, for the parity tests (needs --no-build-isolation)
#   xvfb, mesa, xcb libs   Debian packages for display tests, when we are root
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
VENV="$REPO_ROOT/.venv"
PY="$VENV/bin/python"
STAMP="$VENV/.napari-sam2-install.stamp"

log() { echo "[setup] $*"; }
warn() { echo "[setup] WARNING: $*" >&2; }

# --- virtualenv --------------------------------------------------------------------------------
if [[ ! -x "$PY" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then
        log "creating .venv with python3.11"
        python3.11 -m venv "$VENV"
    else
        log "python3.11 not found; creating .venv with python3"
        python3 -m venv "$VENV"
    fi
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# --- torch -------------------------------------------------------------------------------------
# Exact pins, installed before anything else so that no dependency pulls in another torch. On this
# project's machines pip takes these two wheels from local disk (no multi-GB download); a plain
# `torch` or a newer release would be fetched from PyPI instead.
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
if "$PY" - "$TORCH_VERSION" "$TORCHVISION_VERSION" <<'PYEOF' 2>/dev/null; then
import sys
from importlib.metadata import version

want_torch, want_tv = sys.argv[1:3]
ok = version("torch").split("+")[0] == want_torch and version("torchvision").split("+")[0] == want_tv
sys.exit(0 if ok else 1)
PYEOF
    log "torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION already installed"
else
    # The CUDA build and its libraries take about 7 GB in the venv, plus the wheels unpacked in the
    # temporary folder: say so plainly, before pip stops half-way with "No space left on device".
    need_mb=8000
    for where in "$VENV" "${TMPDIR:-/tmp}"; do
        free_mb="$(df -Pm "$where" | awk 'NR == 2 {print $4}')"
        if [[ -n "$free_mb" && "$free_mb" -lt "$need_mb" ]]; then
            echo "[setup] ERROR: torch needs about $need_mb MB free where $where lies; $free_mb MB are." \
                "Free some space there (old clones, pytest's folders in ${TMPDIR:-/tmp}) and run again." >&2
            exit 1
        fi
    done
    log "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION"
    "${PIP[@]}" install --no-cache-dir "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# --- the package, editable, with test and Qt extras -------------------------------------------
# Skipped when an editable install of this very checkout exists and pyproject.toml is unchanged
# since it was made (the stamp holds the file's hash).
pyproject_hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$pyproject_hash" ]] \
    && "$PY" - "$REPO_ROOT" <<'PYEOF' 2>/dev/null; then
import json
import sys
from importlib.metadata import distribution
from pathlib import Path

direct_url = json.loads(distribution("napari-sam2").read_text("direct_url.json") or "{}")
editable = direct_url.get("dir_info", {}).get("editable", False)
sys.exit(0 if editable and direct_url.get("url") == Path(sys.argv[1]).as_uri() else 1)
PYEOF
    log "napari-sam2 already installed (editable, pyproject.toml unchanged)"
else
    log "installing napari-sam2 in editable mode with extras [test,all]"
    "${PIP[@]}" install -e ".[test,all]"
    echo "$pyproject_hash" > "$STAMP"
fi

# --- reference sam2 for the parity tests -------------------------------------------------------
if "$PY" -c "import sam2" >/dev/null 2>&1; then
    log "sam2 (reference) already installed"
else
    log "installing sam2==1.1.0 (reference implementation, CPU-only build)"
    # Built against the torch installed above, hence no build isolation; that needs a setuptools
    # that can build wheels by itself.
    "${PIP[@]}" install "setuptools>=70.1" wheel
    SAM2_BUILD_CUDA=0 "${PIP[@]}" install --no-build-isolation "sam2==1.1.0"
fi

# --- traccuracy, the independent reader of the CTC export ---------------------------------------
# Without its dependencies: it pins click<8.2, which import-linter (click>=8.2) cannot share; what
# else it imports is in the `test` extra of pyproject.toml.
TRACCURACY_VERSION="0.4.3"
if "$PY" -c "import traccuracy" >/dev/null 2>&1; then
    log "traccuracy already installed"
else
    log "installing traccuracy==$TRACCURACY_VERSION (without its click pin)"
    "${PIP[@]}" install --no-deps "traccuracy==$TRACCURACY_VERSION"
fi

# --- Xvfb and OpenGL for display tests ---------------------------------------------------------
# xvfb-run needs xauth; Qt's xcb platform plugin (a real window on Xvfb) also needs the two xcb
# utility libraries that Debian does not install by default.
DEBIAN_PACKAGES=(xvfb xauth libgl1-mesa-dri libxcb-icccm4 libxcb-keysyms1)
missing=()
if command -v dpkg >/dev/null 2>&1; then
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
elif ! command -v xvfb-run >/dev/null 2>&1; then
    missing=("${DEBIAN_PACKAGES[@]}")
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    log "xvfb-run and display libraries present"
elif [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    warn "missing Debian packages (${missing[*]}) and not root with apt-get: display tests" \
        "will not get a virtual screen. Install them by hand: apt-get install ${missing[*]}"
fi

log "done"
