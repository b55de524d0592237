#!/usr/bin/env bash
# Install DiskLLM from this checkout: build tools (if missing), then the Python package.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"

"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: DiskLLM needs Python >= 3.11 ($("$PY" --version 2>&1))" >&2; exit 1; }

# cmake, a C++ compiler and git build the pinned llama-server; ccache makes rebuilds fast.
missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v c++ >/dev/null || command -v g++ >/dev/null || missing+=(g++)
command -v git >/dev/null || missing+=(git)
command -v ccache >/dev/null || missing+=(ccache)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        echo "install.sh: installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    elif [[ " ${missing[*]} " == " ccache " ]]; then
        echo "install.sh: ccache not found (optional: it speeds up rebuilds)"
    else
        echo "install.sh: missing ${missing[*]}; install them (e.g. sudo apt-get install ${missing[*]}) and re-run" >&2
        exit 1
    fi
fi

# Test extras are small (pytest, openai) and let the README's test command run as is.
"$PY" -m pip install --disable-pip-version-check -q -e '.[test]'

if ! command -v diskllm >/dev/null; then
    echo "install.sh: 'diskllm' is installed but not on PATH; add $("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))') to PATH" >&2
fi
cat <<'MSG'
DiskLLM installed. Next steps:
  diskllm run smollm2:135m      # first run builds llama-server (~5 min on 2 cores), then chats
  diskllm run ./model.gguf      # any local GGUF file
  diskllm ps / diskllm stop --all
  python -m pytest -q           # the test suite
MSG
