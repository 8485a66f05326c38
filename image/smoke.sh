#!/usr/bin/env bash
# First contact with a built image: what a user starts, started for real in the image, as uid 1000, offline.
#   make image-smoke IMAGE=ghcr.io/llm-finetune-pipelines/llm-finetune:0.3.0     (or: image/smoke.sh IMAGE)
# ENGINE=docker|podman (default: podman when installed). CPU only, no GPU needed: ~5 minutes on 2 cores.
# Checks, each in a fresh container (--user 1000:1000 --network none):
#   1. the user is uid 1000 and the default working directory and /storage are writable;
#   2. the dependency set is consistent (pip check) and no compiler is left in the image;
#   3. compiling every preset gives exactly the checked-in compiled/ IR;
#   4. the heavy imports (torch with its CUDA runtime and cuDNN from the wheels, transformers, peft, LLaMA-Factory,
#      bitsandbytes, deepspeed, MLflow, gradio) and `llamafactory-cli version`;
#   5. `llamafactory-cli webui` answers on its port (7860) in /storage;
#   6. the CPU demo (`python -m pipelines.run_local`) on /storage, then in the default working directory.
set -euo pipefail

IMAGE=${1:?usage: image/smoke.sh IMAGE}
ENGINE=${ENGINE:-$(command -v podman || command -v docker)}
REPO=$(cd "$(dirname "$0")/.." && pwd)
passed=0

# check NAME COMMAND...: run COMMAND in a fresh container of IMAGE as uid 1000, offline; stop at the first failure.
check() {
    local name=$1 started=$SECONDS
    shift
    echo "== $name"
    if ! "$ENGINE" run --rm --user 1000:1000 --network none "$@"; then
        echo "-- FAILED: $name" >&2
        exit 1
    fi
    passed=$((passed + 1))
    echo "-- ok ($((SECONDS - started)) s)"
}

check "uid 1000, writable working directory and /storage" "$IMAGE" sh -euc '
    echo "user $(id -u):$(id -g) ($(id -un)), HOME=$HOME, working directory $(pwd)"
    test "$(id -u)" = 1000
    touch ./probe /storage/probe && rm ./probe /storage/probe
    grep -E "^(PRETTY_NAME|VERSION_ID)=" /etc/os-release; python --version'

check "consistent dependencies, no compiler" "$IMAGE" sh -euc '
    pip check
    for tool in gcc cc g++ nvcc; do
        if command -v "$tool"; then echo "$tool is in the image" >&2; exit 1; fi
    done
    echo "no compiler"'

check "python -m pipelines.compile gives the checked-in IR" -v "$REPO/compiled:/expected:ro" "$IMAGE" sh -euc '
    python -m pipelines.compile --output /tmp/compiled
    diff -r /expected /tmp/compiled && echo "identical to compiled/: $(ls /tmp/compiled | tr "\n" " ")"'

check "heavy imports, llamafactory-cli version" "$IMAGE" sh -euc '
    python - <<PYTHON
import importlib, warnings
warnings.simplefilter("ignore")
import torch
for name in ("transformers", "peft", "accelerate", "datasets", "llamafactory", "bitsandbytes", "deepspeed",
             "mlflow", "kfp", "gradio"):
    print(f"{name:<13}", importlib.import_module(name).__version__)
print(f"torch         {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
      f" (from the wheels), GPU here: {torch.cuda.is_available()}")
PYTHON
    llamafactory-cli version'

check "llamafactory-cli webui answers on port 7860 in /storage" -w /storage "$IMAGE" sh -euc '
    llamafactory-cli webui > /tmp/webui.log 2>&1 &
    python - <<PYTHON
import json, time, urllib.request
deadline = time.monotonic() + 300
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:7860/", timeout=5) as page:
            status = page.status
        with urllib.request.urlopen("http://127.0.0.1:7860/config", timeout=5) as config:
            print("HTTP", status, "from", json.load(config)["title"])
        break
    except OSError:
        if time.monotonic() > deadline:
            print(open("/tmp/webui.log").read()[-3000:])
            raise
        time.sleep(1)
PYTHON
    kill $!
    ls -d /storage/llamaboard_cache 2>/dev/null || true'

check "CPU demo on /storage" -w /storage "$IMAGE" python -m pipelines.run_local --storage /storage

check "CPU demo in the default working directory" "$IMAGE" sh -euc '
    python -m pipelines.run_local
    echo "written under $(pwd)/storage: $(ls storage | tr "\n" " ")"'

echo "image smoke: all $passed checks passed for $IMAGE"
