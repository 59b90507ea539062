# Shared by bin/demo and bin/test: make .venv with the pinned requirements.
# Usage: ensure_venv requirements-file
ensure_venv() {
  local req="$1"
  local py="${PYTHON:-python3}"
  if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "CancerWeb needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 1
  fi
  if [ ! -x .venv/bin/python ]; then
    if ! "$py" -m venv .venv 2>/dev/null; then
      # Debian and Ubuntu ship venv separately.
      echo "installing python3-venv" >&2
      as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      rm -rf .venv && "$py" -m venv .venv
    fi
  fi
  local tag; tag=$(basename "$req" .txt)
  local stamp=".venv/.installed-$tag-$(cat "$req" requirements.txt | sha256sum | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1
    .venv/bin/python -m pip install -q -r "$req"
    rm -f ".venv/.installed-$tag-"* && touch "$stamp"
  fi
}

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}
