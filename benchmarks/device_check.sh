#!/usr/bin/env bash
# kdlab's checks on a CUDA machine (the workplace's H200 "device" machine: Python 3.12, torch 2.11,
# no network, no pydantic). From the repo root:
#
#     bash benchmarks/device_check.sh OUT_DIR
#
# Steps (each reported; a failed step does not stop the later ones that can still run):
#   1. install kdlab's missing dependencies from the wheels in benchmarks/wheels/, then kdlab
#      itself with --no-deps (the machine's torch must stay), editable or else via PYTHONPATH;
#   2. python -c "import kdlab" sanity check, with torch/CUDA versions;
#   3. python -m pytest -q -m gpu  (every loss term on CUDA in fp32/bf16/fp16, device placement,
#      GradScaler, save on GPU / load on CPU, and 2-process DDP over NCCL where there are 2 GPUs;
#      time-limited; OUT_DIR/pytest_gpu.log);
#   4. python benchmarks/bench_device.py --device cuda --json OUT_DIR/bench_device.json
#      (time-limited so the whole script stays within ~8 minutes);
#   5. a summary (also OUT_DIR/summary.txt). Exit status 1 when any step failed.
#
# benchmarks/wheels/ (git-ignored) must be filled first on a machine that reaches the package
# registry, for CPython 3.12 on manylinux x86_64. From the repo root:
#
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#         --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
#         --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#         --platform manylinux1_x86_64 -d benchmarks/wheels \
#         pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#         typing-inspection==0.4.5 typing-extensions==4.16.0 safetensors==0.8.0 \
#         hypothesis==6.170.17 sortedcontainers==2.4.0
#
# (pydantic's pins: pydantic-core==2.50.5, typing-extensions>=4.16.0 — newer than the machine's
# may be — annotated-types, typing-inspection. Everything else kdlab imports — numpy, scipy,
# scikit-learn, pyyaml, typer, rich, pillow, safetensors, pytest, hypothesis — is already on the
# machine; the last three wheels only cover a different image. Keep one version of each wheel.)
# With the device tool:  run(command="bash benchmarks/device_check.sh $OUT",
#                            carry=["benchmarks/wheels"], timeout_s=600)
#
# Environment: PYTHON (default python3), DEVICE_CHECK_BUDGET_S (whole script, default 480),
# PYTEST_TIMEOUT_S (default 150), BENCH_ARGS (extra arguments for bench_device.py, e.g.
# "--quick" or "--variants kd,hand,bf16").

set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: bash benchmarks/device_check.sh OUT_DIR" >&2
    exit 2
fi
OUT_DIR=$1
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY=${PYTHON:-python3}
BUDGET_S=${DEVICE_CHECK_BUDGET_S:-480}
PYTEST_TIMEOUT_S=${PYTEST_TIMEOUT_S:-150}
BENCH_VARIANTS=kd,hand,bf16,fp16,channels_last,cached,alone,compile,ddp
WHEELS=benchmarks/wheels
NEEDED=(pydantic pydantic-core annotated-types typing-inspection typing-extensions safetensors
    hypothesis sortedcontainers)
export PYTHONUNBUFFERED=1
START=$SECONDS

STEPS=()
RESULTS=()
FAILED=0
record() {  # record STEP RESULT [fail]
    STEPS+=("$1")
    RESULTS+=("$2")
    if [[ ${3:-} == fail ]]; then FAILED=1; fi
    echo "== $1: $2"
}
banner() { echo; echo "=== [$((SECONDS - START)) s] $*"; }
timed_out() { [[ $1 -eq 124 || $1 -eq 137 ]]; }

# -- 0. environment ------------------------------------------------------------------------------
banner "environment"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "python: $(command -v "$PY") $("$PY" --version 2>&1)"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
    else
        echo "nvidia-smi: not found"
    fi
    "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 || true
    git log -1 --format='commit %H %s' 2>/dev/null || true
} | tee "$OUT_DIR/env.txt"
TORCH_BEFORE=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)

# -- 1. dependencies and kdlab -------------------------------------------------------------------
banner "1. install"
: >"$OUT_DIR/install.log"
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
deps_ok=0
if [[ ${#wheels[@]} -eq 0 ]]; then
    echo "no wheels in $WHEELS (fill it with the pip download command at the top of this script)" \
        | tee -a "$OUT_DIR/install.log"
elif "$PY" -m pip install --no-index --find-links "$WHEELS" --no-cache-dir "${NEEDED[@]}" \
        >>"$OUT_DIR/install.log" 2>&1; then
    deps_ok=1
else
    # An environment pip may not write to: the README's way, into a folder on PYTHONPATH.
    echo "pip install into the environment failed; trying --target /tmp/kdlab-site" \
        | tee -a "$OUT_DIR/install.log"
    if "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/kdlab-site "${wheels[@]}" >>"$OUT_DIR/install.log" 2>&1; then
        export PYTHONPATH=/tmp/kdlab-site${PYTHONPATH:+:$PYTHONPATH}
        deps_ok=1
    fi
fi
if "$PY" -c 'import pydantic, annotated_types, typing_inspection, safetensors' \
        >>"$OUT_DIR/install.log" 2>&1; then
    deps_result="dependencies importable (pydantic $("$PY" -c 'import pydantic; print(pydantic.VERSION)'))"
    [[ $deps_ok -eq 1 ]] || deps_result+=" although the wheel install did not succeed"
    deps_fail=
else
    deps_result="FAILED: pydantic (or another dependency) is not importable; see install.log"
    deps_fail=fail
fi
if "$PY" -m pip install --no-index --no-deps --no-build-isolation --no-cache-dir -e . \
        >>"$OUT_DIR/install.log" 2>&1; then
    kdlab_how="kdlab installed editable (--no-deps)"
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
    kdlab_how="editable install failed (see install.log); kdlab from PYTHONPATH=src"
fi
TORCH_AFTER=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo none)
if [[ $TORCH_AFTER != "$TORCH_BEFORE" ]]; then
    deps_result+="; torch CHANGED $TORCH_BEFORE -> $TORCH_AFTER"
    deps_fail=fail
fi
record "install" "$deps_result; $kdlab_how" $deps_fail
tail -n 5 "$OUT_DIR/install.log"

# -- 2. import sanity ----------------------------------------------------------------------------
banner "2. import kdlab"
import_ok=0
if "$PY" -c '
import kdlab, kdlab.cli, kdlab.devices, torch
from kdlab.settings import TrainSettings
s = TrainSettings(device="cuda", precision="bf16")
print("kdlab", kdlab.__file__, "| torch", torch.__version__, "| cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "|", s.device, s.precision)
' 2>&1 | tee "$OUT_DIR/import.log"; then
    import_ok=1
    record "import" "ok: $(tail -n 1 "$OUT_DIR/import.log")"
else
    record "import" "FAILED (see import.log)" fail
fi

# -- 3. GPU tests --------------------------------------------------------------------------------
banner "3. pytest -m gpu (limit ${PYTEST_TIMEOUT_S} s)"
if [[ $import_ok -eq 1 ]]; then
    set +e
    timeout --kill-after=10 "$PYTEST_TIMEOUT_S" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
        2>&1 | tee "$OUT_DIR/pytest_gpu.log"
    rc=${PIPESTATUS[0]}
    set -e
    last=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran)' "$OUT_DIR/pytest_gpu.log" \
        | tail -n 1 || true)
    if [[ $rc -eq 0 && $last == *" passed"* ]]; then
        record "pytest -m gpu" "ok: $last"
    elif [[ $rc -eq 0 ]]; then  # every gpu test skipped: CUDA not usable here
        record "pytest -m gpu" "FAILED: no gpu test ran: $last" fail
    elif [[ $rc -eq 5 ]]; then
        record "pytest -m gpu" "FAILED: no test marked gpu was collected" fail
    elif timed_out "$rc"; then
        record "pytest -m gpu" "FAILED: timed out after ${PYTEST_TIMEOUT_S} s: $last" fail
    else
        record "pytest -m gpu" "FAILED (exit $rc): $last" fail
    fi
else
    record "pytest -m gpu" "skipped: kdlab does not import" fail
fi

# -- 4. benchmark --------------------------------------------------------------------------------
left=$((BUDGET_S - (SECONDS - START) - 15))
if [[ $left -lt 60 ]]; then left=60; fi
soft=$((left * 7 / 10))  # bench_device starts no new variant after this
banner "4. bench_device.py --device cuda (limit ${left} s, new variants until ${soft} s)"
BENCH_JSON=$OUT_DIR/bench_device.json
if [[ $import_ok -eq 1 ]]; then
    set +e
    # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
    timeout --kill-after=10 "$left" "$PY" benchmarks/bench_device.py --device cuda \
        --json "$BENCH_JSON" --budget-s "$soft" --variants "$BENCH_VARIANTS" ${BENCH_ARGS:-} \
        >"$OUT_DIR/bench_device.log" 2>&1
    rc=$?
    set -e
    sed -n '/ images, batch /,$p' "$OUT_DIR/bench_device.log"
    if [[ $rc -eq 0 ]]; then
        record "bench_device" "ok: $BENCH_JSON"
    elif timed_out "$rc"; then
        record "bench_device" "FAILED: stopped at its ${left} s limit (partial JSON kept)" fail
    else
        record "bench_device" "FAILED (exit $rc); last lines of bench_device.log below" fail
        tail -n 15 "$OUT_DIR/bench_device.log"
    fi
else
    record "bench_device" "skipped: kdlab does not import" fail
fi

# -- 5. summary ----------------------------------------------------------------------------------
banner "5. summary"
{
    echo "device_check.sh: $((SECONDS - START)) s; outputs in $OUT_DIR"
    for i in "${!STEPS[@]}"; do
        printf '  %-15s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}"
    done
    if [[ -s $BENCH_JSON ]]; then
        "$PY" - "$BENCH_JSON" <<'EOF' || echo "  (could not read $BENCH_JSON)"
import json, sys

d = json.load(open(sys.argv[1]))
print(f"  bench: {d['device_name']}, {d['n_images']} images, complete={d['complete']}")
for name, row in d["variants"].items():
    if row["status"] == "ok":
        print(f"    {name:<14}{row['seconds_per_epoch']:>9.3f} s/epoch{row['images_per_second']:>10.0f} img/s")
    else:
        print(f"    {name:<14}{row['note']}")
for key, value in d["ratios"].items():
    if value is not None:
        print(f"    {key:<28}{value:>7.3f}")
EOF
    fi
    if [[ $FAILED -eq 0 ]]; then echo "RESULT: all steps ok"; else echo "RESULT: some steps FAILED"; fi
} | tee "$OUT_DIR/summary.txt"
exit "$FAILED"
