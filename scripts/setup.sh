#!/usr/bin/env bash
# Set up edgekit on a fresh Debian/Ubuntu machine: virtualenv, install, and the real Fashion-MNIST.
# Usage: scripts/setup.sh [EXTRAS]   (default: runtime,train,dev; a board uses: runtime)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-runtime,train,dev}"
py="${PYTHON:-python3}"

# The runtime extra needs wheels of ai-edge-litert and onnxruntime, which exist only for these.
case ",$extras," in
  *,runtime,*)
    os_name="$(uname -s)"; machine="$(uname -m)"
    case "$os_name/$machine" in
      Linux/x86_64|Linux/aarch64|Linux/arm64|Darwin/arm64|Darwin/x86_64) ;;
      *)
        cat >&2 <<MSG
setup: edgekit's device side cannot be installed on $os_name/$machine: ai-edge-litert and
       onnxruntime publish no wheels for it (there are none for 32-bit ARM, armv7l/armv6l).
       Supported boards and systems:
         - Raspberry Pi 4 / 5 with the 64-bit Raspberry Pi OS (Bookworm, arm64) or Debian/Ubuntu arm64;
         - NVIDIA Jetson with JetPack (Ubuntu, aarch64);
         - x86-64 Linux desktops and servers; macOS (arm64, x86-64) for development.
       On a Raspberry Pi running the 32-bit OS, reinstall it with the 64-bit image
       (Raspberry Pi Imager: "Raspberry Pi OS (64-bit)"); 'uname -m' then prints aarch64.
MSG
        exit 2
        ;;
    esac
    ;;
esac

if ! "$py" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null; then
  echo "setup: edgekit needs Python 3.10 or newer (3.11 recommended); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $("$py" --version)"
  "$py" -m venv .venv || { echo "setup: 'python3 -m venv' failed; install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
fi
stamp=".venv/.edgekit-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing edgekit[$extras] (first time takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  log=".venv/edgekit-pip-install.log"
  if ! .venv/bin/python -m pip install -q -e ".[$extras]" >"$log" 2>&1; then
    echo "setup: pip could not install edgekit[$extras] on $(uname -s)/$(uname -m) with $(.venv/bin/python --version)." >&2
    grep -E "^ERROR|No matching distribution|Could not find a version" "$log" | head -5 | sed 's/^/       /' >&2 || true
    echo "       The full pip output is in $log. Check the network (or PIP_INDEX_URL), and that this" >&2
    echo "       platform has wheels for every package of the extra (see README, 'Boards')." >&2
    exit 1
  fi
  touch "$stamp"
fi

# The real Fashion-MNIST comes from Debian's package; only the workstation (train extra) needs it.
case ",$extras," in
  *,train,*)
    ds=/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
    if [ ! -f "$ds" ] && [ -z "${EDGEKIT_FASHION_MNIST:-}" ]; then
      if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "setup: installing the Debian package dataset-fashion-mnist"
        (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
          { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null; }) ||
          echo "setup: warning: apt-get could not install dataset-fashion-mnist" >&2
      elif command -v sudo >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo apt-get install -y -q dataset-fashion-mnist >/dev/null || echo "setup: warning: sudo apt-get failed" >&2
      fi
      if [ ! -f "$ds" ]; then
        echo "setup: Fashion-MNIST is not installed. Either run 'sudo apt-get install dataset-fashion-mnist'," >&2
        echo "       or set EDGEKIT_FASHION_MNIST=/folder/with/the/IDX/files, or pass --data-dir to edgekit train;" >&2
        echo "       online machines can also let Keras download it. Tests that need it will be skipped." >&2
      fi
    fi
    ;;
esac
echo "setup: ready (.venv, extras: $extras)"
