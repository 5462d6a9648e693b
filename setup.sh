#!/usr/bin/env bash
# One-time (and idempotent) set-up of Airlock on a fresh machine: OS tools, the CPU build of torch, the package.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
say() { printf 'airlock setup: %s\n' "$*"; }

# git, ssh-keygen (SSH commit and approval signatures) and gpg are the gates' own crypto tools; bubblewrap is the
# sandbox every piece of team code runs in (without it a run refuses, unless the policy says the pod is the sandbox).
missing=()
command -v git >/dev/null || missing+=(git)
command -v ssh-keygen >/dev/null || missing+=(openssh-client)
command -v gpg >/dev/null || missing+=(gnupg)
command -v bwrap >/dev/null || missing+=(bubblewrap)
command -v prlimit >/dev/null || missing+=(util-linux)  # sets the sandbox's memory and output caps
# The tests drive the Prefect UI's Resume form in a real headless browser (tests/test_prefect_ui.py).
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
# A PKCS#11 token for the signing-mode tests (SoftHSM2), and OpenSC's pkcs11-tool to make keys inside it.
[ -f /usr/lib/softhsm/libsofthsm2.so ] || missing+=(softhsm2)
command -v pkcs11-tool >/dev/null || missing+=(opensc)
# An OCI registry (distribution 2.8) the tests start on 127.0.0.1 for the OCI model store (registry/oci.py).
command -v docker-registry >/dev/null || missing+=(docker-registry)
# Redis, the runtime guard's shared store, started by the tests on 127.0.0.1 (serve/store.py).
command -v redis-server >/dev/null || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${missing[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing ${missing[*]}: install them with your package manager, then run ./setup.sh again" >&2
    exit 1
  fi
fi

# torch first, and the CPU build: a plain `torch` requirement on a machine without torch pulls a multi-GB CUDA build.
# Set AIRLOCK_TORCH_INDEX to a CPU wheel index where `pip install torch==2.13.0` would not find a CPU build.
if ! "$PY" -c "import torch" 2>/dev/null; then
  say "installing the CPU build of torch 2.13.0"
  if [ -n "${AIRLOCK_TORCH_INDEX:-}" ]; then
    "$PY" -m pip install -q torch==2.13.0 --index-url "$AIRLOCK_TORCH_INDEX"
  else
    "$PY" -m pip install -q torch==2.13.0
  fi
fi

say "installing airlock and its test tools"
if ! "$PY" -m pip install -q --root-user-action=ignore -e ".[test]"; then
  say "pip could not install airlock: see its output above" >&2
  exit 1
fi
# pyenv only exposes a newly installed console script after a rehash.
if command -v pyenv >/dev/null; then pyenv rehash || true; fi
# Prefect migrates every new database from scratch (~8 s on 2 cores): do it once here for this Prefect version; each
# `airlock demo` copies the migrated database into its own PREFECT_HOME (flows/_server.py).
# The example trainer's packages, installed from its lock with every hash checked (airlock/trainer_env.py), once:
# the demo and the tests then find the environment built (~25 s and ~1 GB, kept in ~/.cache/airlock/trainer-envs).
say "building the example trainer's locked environment (training/requirements.lock)"
if ! "$PY" -m airlock.trainer_env training/requirements.lock >/dev/null; then
  say "the example trainer's environment could not be built: see the line above" >&2
  exit 1
fi
# An MLflow tracking server for the mirror's tests (registry/mlflow_mirror.py), in its own environment: Airlock talks
# to MLflow over its REST API and needs no MLflow package of its own (~1 min and ~850 MB, once).
MLFLOW_ENV="${XDG_CACHE_HOME:-$HOME/.cache}/airlock/mlflow-server"
MLFLOW_VERSION="3.17.2"
if ! "$MLFLOW_ENV/bin/mlflow" --version 2>/dev/null | grep -q "$MLFLOW_VERSION"; then
  say "installing an MLflow $MLFLOW_VERSION server for the tests ($MLFLOW_ENV)"
  rm -rf "$MLFLOW_ENV"
  "$PY" -m venv "$MLFLOW_ENV"
  if ! "$MLFLOW_ENV/bin/pip" install -q --disable-pip-version-check "mlflow==$MLFLOW_VERSION"; then
    say "MLflow could not be installed: see pip's output above" >&2
    exit 1
  fi
fi
say "preparing an empty Prefect database for the demo"
"$PY" -m flows._server --prepare >/dev/null
say "ready: run 'airlock demo' or 'python3 -m pytest -q'"
