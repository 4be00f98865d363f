#!/usr/bin/env bash
# UI CI for the WebUI extension and the gradio tabs. Usage: .ci/ui.sh <main venv>   (called by .ci/run)
#
# 1. Installs Debian's Chromium if /usr/bin/chromium is missing (apt-get, ~75 s the first time).
# 2. Installs Playwright into the main venv with pip (never `playwright install`: the browser is Debian's).
#    The main venv's pytest then runs tests/ui and tests/webui on the newest gradio, browser test included;
#    that test prints where its screenshots go ($SD_AWS_UI_SCREENSHOTS, default artifacts/ui-browser).
# 3. For each host (notes/webui-host.md) a venv with its web pins, created once and re-used while the pins are
#    unchanged (~1 min to build, seconds to re-use):
#      .venv-gradio3  A1111 v1.10: gradio 3.41.2, fastapi 0.94.0, pydantic 1, httpx 0.24.1, httpcore 0.15.0
#      .venv-forge    Forge: gradio 4.40.0, fastapi 0.104.1, pydantic 2.8.2, httpx 0.24.1
#    (both with Pillow 9.5.0, numpy 1.26.2 and huggingface_hub < 0.26, which those gradio versions import).
# 4. Runs tests/ui and tests/webui in each, the browser test included (screenshots in
#    artifacts/ui-browser-<venv>). The middleware, `sd-aws up` and the workers those tests start run on the main
#    venv's Python (SD_AWS_TEST_SERVER_PYTHON): they cannot run on pydantic 1.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PIP_DISABLE_PIP_VERSION_CHECK=1
MAIN_VENV=$(cd "${1:?usage: .ci/ui.sh <main venv>}" && pwd)
# Both hosts run on torch (the host stand-in's processing makes its batches as tensors, as A1111 does): the CPU
# wheel the main venv has.
TEST_TOOLS=(torch==2.13.0 requests tqdm pytest pytest-timeout playwright)
A1111_PINS=(gradio==3.41.2 fastapi==0.94.0 "pydantic<2" httpx==0.24.1 httpcore==0.15.0 "huggingface_hub<0.26"
            pillow==9.5.0 numpy==1.26.2 "${TEST_TOOLS[@]}")
FORGE_PINS=(gradio==4.40.0 fastapi==0.104.1 pydantic==2.8.2 httpx==0.24.1 "huggingface_hub<0.26"
            pillow==9.5.0 numpy==1.26.2 "${TEST_TOOLS[@]}")

if [ ! -x /usr/bin/chromium ]; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium
fi

"$MAIN_VENV/bin/python" -c "import playwright" 2>/dev/null || "$MAIN_VENV/bin/pip" install -q playwright

# run_on_host <venv> <host name> <pins...>: (re)build the venv if its pins changed, then run the UI tests in it.
run_on_host() {
    local venv=$1 host=$2
    shift 2
    if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$*" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "$@"
        echo "$*" > "$venv/.pins"
    fi
    local screenshots="$PWD/artifacts/ui-browser-${venv#.venv-}"
    echo "UI tests on gradio $("$venv/bin/python" -c 'import gradio; print(gradio.__version__)') ($host pins)"
    echo "browser screenshots ($host): $screenshots"
    SD_AWS_TEST_SERVER_PYTHON="$MAIN_VENV/bin/python" SD_AWS_UI_SCREENSHOTS="$screenshots" \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/ui tests/webui
}

status=0
run_on_host .venv-gradio3 "A1111 v1.10" "${A1111_PINS[@]}" || status=1
run_on_host .venv-forge "Forge" "${FORGE_PINS[@]}" || status=1
exit $status
