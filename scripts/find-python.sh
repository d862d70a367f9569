#!/usr/bin/env bash
# Prints the path of a Python >= 3.12 interpreter, or fails with a hint.
set -euo pipefail
candidates=()
[ -n "${LCORE_PYTHON:-}" ] && candidates+=("$LCORE_PYTHON")
for root in "${PYENV_ROOT:-}" "$HOME/.pyenv" /root/.pyenv /opt/pyenv; do
  [ -n "$root" ] || continue
  # 3.12 first: the version the Llama Stack 0.7 stack is measured on.
  for p in $(ls -d "$root"/versions/3.12*/bin/python3 2>/dev/null | sort -rV) \
           $(ls -d "$root"/versions/3.1[3-9]*/bin/python3 2>/dev/null | sort -V); do
    candidates+=("$p")
  done
done
for name in python3.12 python3.13 python3; do
  p=$(command -v "$name" 2>/dev/null) && candidates+=("$p")
done
for p in "${candidates[@]}"; do
  if "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; then
    echo "$p"; exit 0
  fi
done
echo "no Python >= 3.12 found; install one or set LCORE_PYTHON=/path/to/python3.12" >&2
exit 1
