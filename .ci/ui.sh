#!/usr/bin/env bash
# UI CI for the WebUI extension and the gradio tabs. Usage: .ci/ui.sh <main venv>   (called by .ci/run)
#
# 1. Installs Debian's Chromium if /usr/bin/chromium is missing (apt-get, ~75 s the first time).
# 2. Installs Playwright into the main venv with pip (never `playwright install`: the browser is Debian's).
#    The main venv's pytest then runs tests/ui and tests/webui on the newest gradio, browser test included;
#    that test prints where its screenshots go ($SD_AWS_UI_SCREENSHOTS, default artifacts/ui-browser).
# 3. Creates .venv-gradio3 with A1111 v1.10's web pins (gradio 3.41.2, fastapi 0.94.0, pydantic 1, httpx 0.24.1,
#    httpcore 0.15.0, Pillow 9.5.0, numpy 1.26.2, huggingface_hub < 0.26) once; a second run re-uses it while
#    the pins below are unchanged (~1 min to build, seconds to re-use).
# 4. Runs tests/ui and tests/webui in that venv, the browser test included (its screenshots go to
#    artifacts/ui-browser-gradio3). The middleware, `sd-aws up` and the workers those tests start cannot run on
#    pydantic 1: they run on the main venv's Python (SD_AWS_TEST_SERVER_PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PIP_DISABLE_PIP_VERSION_CHECK=1
MAIN_VENV=$(cd "${1:?usage: .ci/ui.sh <main venv>}" && pwd)
A1111_VENV=.venv-gradio3
A1111_PINS=(gradio==3.41.2 fastapi==0.94.0 "pydantic<2" httpx==0.24.1 httpcore==0.15.0 "huggingface_hub<0.26"
            pillow==9.5.0 numpy==1.26.2 requests tqdm pytest pytest-timeout playwright)

if [ ! -x /usr/bin/chromium ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi

"$MAIN_VENV/bin/python" -c "import playwright" 2>/dev/null || "$MAIN_VENV/bin/pip" install -q playwright

if [ "$(cat "$A1111_VENV/.pins" 2>/dev/null)" != "${A1111_PINS[*]}" ]; then
    rm -rf "$A1111_VENV"
    python3 -m venv "$A1111_VENV"
    "$A1111_VENV/bin/pip" install -q "${A1111_PINS[@]}"
    echo "${A1111_PINS[*]}" > "$A1111_VENV/.pins"
fi

echo "UI tests on gradio $("$A1111_VENV/bin/python" -c 'import gradio; print(gradio.__version__)') (A1111 v1.10 pins)"
echo "browser screenshots (gradio 3.41.2): $PWD/artifacts/ui-browser-gradio3"
SD_AWS_TEST_SERVER_PYTHON="$MAIN_VENV/bin/python" SD_AWS_UI_SCREENSHOTS="$PWD/artifacts/ui-browser-gradio3" \
    "$A1111_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/ui tests/webui
