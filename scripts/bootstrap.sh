#!/usr/bin/env bash
# Install everything editflow needs on a fresh machine, idempotently:
#   1. a virtualenv in .venv with the pinned packages (constraints.txt),
#   2. editflow itself (editable, strict mode: see operator/README.md),
#   3. the platform binaries (`editflow dev install`, cached under ~/.cache/editflow),
#   and, as root on Debian, chromium (browser test) and the image build tools (buildah, ...).
# A second run only checks stamps and checksums: it takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
CACHE=${EDITFLOW_CACHE_DIR:-$HOME/.cache/editflow}
export PIP_CACHE_DIR=${PIP_CACHE_DIR:-$CACHE/pip}
export PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$CACHE"

step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
t0=$(date +%s)

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  echo "error: $PYTHON not found; editflow needs CPython 3.11 (set PYTHON=/path/to/python3.11)" >&2
  exit 1
fi
if ! command -v go >/dev/null 2>&1; then
  echo "error: the Go toolchain (>= 1.24) is needed to build the platform binaries; install it and put 'go' on PATH" >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall packages only when what decides them changed.
stamp="$VENV/.editflow-deps-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  step "installing Python packages (torch is large: the first run downloads several GB)"
  s=$(date +%s)
  "$VENV/bin/pip" install --progress-bar on -c constraints.txt "setuptools>=75" wheel
  "$VENV/bin/pip" install --progress-bar on -c constraints.txt -e ".[inference,dev]" \
      --config-settings editable_mode=strict
  rm -f "$VENV"/.editflow-deps-*
  touch "$stamp"
  echo "    python packages: $(( $(date +%s) - s ))s" >&2
fi

# Strict editable mode links files one by one: relink so new modules are seen.
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . --config-settings editable_mode=strict

# The gateway's browser tests drive Debian's headless Chromium with Selenium through Debian's
# chromium-driver (the same version as the browser), and Chinese pages need a CJK font to be
# readable in their screenshots. Nothing is installed at test time, so they come from here
# (root on Debian only), in one apt-get line.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || [ ! -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing chromium, chromium-driver and a CJK font (gateway browser tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q chromium chromium-driver fonts-noto-cjk
  else
    echo "note: chromium, chromium-driver or fonts-noto-cjk is missing and this is not root on Debian; the gateway browser tests will be skipped" >&2
  fi
fi

# editflow's images are built without a container engine (`make images`, tests/images/):
# Debian's buildah, runc, skopeo, umoci, mmdebstrap, zstd (root on Debian only); the process
# kubelet's tests make their small image from busybox-static (tests/devstack/testimage.py).
image_tools="buildah runc skopeo umoci mmdebstrap zstd busybox-static"
missing_tools=""
for pkg in $image_tools; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing_tools="$missing_tools $pkg"
done
if [ -n "$missing_tools" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing image build tools:$missing_tools"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086 # one word per package
    apt-get install -y -q --no-install-recommends $missing_tools
  else
    echo "note:$missing_tools missing and this is not root on Debian; the image tests will be skipped" >&2
  fi
fi

step "platform binaries (editflow dev install)"
"$VENV/bin/editflow" dev install
echo "bootstrap done in $(( $(date +%s) - t0 ))s" >&2
