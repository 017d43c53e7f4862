#!/usr/bin/env bash
# Checks everything under deploy/ that can be checked without a Docker engine
# or a Kubernetes cluster (deploy/README.md, "Checking it"), and exits
# non-zero if anything fails. Every check runs; the failures are listed at
# the end.
#
# Fetches what it needs when missing:
# - promtool, from Debian's prometheus package, unpacked under
#   target/deploy-tools (installing the package would start a Prometheus
#   server on port 9090, hookwire's admin port);
# - a venv under target/deploy-venv with kubernetes-validate and PyYAML (PyPI).
# Where a built hookwire binary exists (target/release or target/debug) it
# also runs `hookwire check` on the configs; it never builds one.
set -euo pipefail
cd "$(dirname "$0")/.."
# No __pycache__ in the work tree (check-deploy.py imports grafana/metrics.py).
export PYTHONDONTWRITEBYTECODE=1

K8S_VERSION=1.32.0
PY_REQUIREMENTS=("kubernetes-validate==1.37.0" "pyyaml==6.0.3")
VENV=target/deploy-venv
TOOLS=target/deploy-tools
OUT=target/deploy-check
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

failed=()
step() { printf '\n== %s\n' "$*"; }
# run NAME COMMAND...: runs a check, records it as failed if it exits non-zero.
run() {
  local name=$1; shift
  if "$@"; then
    echo "   ok: $name"
  else
    echo "   FAILED: $name" >&2
    failed+=("$name")
  fi
}

# --- tools ------------------------------------------------------------------
ensure_promtool() {
  if command -v promtool >/dev/null 2>&1; then
    PROMTOOL=$(command -v promtool)
    return
  fi
  PROMTOOL=$TOOLS/usr/bin/promtool
  [ -x "$PROMTOOL" ] && return
  echo "promtool: unpacking it from Debian's prometheus package into $TOOLS"
  mkdir -p "$TOOLS"
  rm -f "$TOOLS"/prometheus_*.deb
  if ! (cd "$TOOLS" && apt-get download prometheus >/dev/null 2>&1); then
    $SUDO apt-get update -qq
    (cd "$TOOLS" && apt-get download prometheus >/dev/null 2>&1)
  fi
  dpkg-deb --fsys-tarfile "$TOOLS"/prometheus_*.deb | tar -x -C "$TOOLS" ./usr/bin/promtool
  rm -f "$TOOLS"/prometheus_*.deb
}

ensure_venv() {
  local marker=$VENV/.check-deploy-requirements
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$marker" 2>/dev/null)" = "${PY_REQUIREMENTS[*]}" ]; then
    return
  fi
  echo "venv: creating $VENV with ${PY_REQUIREMENTS[*]}"
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv support separately.
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_REQUIREMENTS[@]}"
  echo "${PY_REQUIREMENTS[*]}" >"$marker"
}

started=$(date +%s)
step "tools"
ensure_promtool
ensure_venv
PY=$VENV/bin/python
"$PROMTOOL" --version 2>&1 | head -1
HOOKWIRE=""
for candidate in target/release/hookwire target/debug/hookwire; do
  if [ -x "$candidate" ]; then HOOKWIRE=$candidate; break; fi
done
echo "hookwire binary: ${HOOKWIRE:-none built (hookwire check skipped)}"
rm -rf "$OUT"
mkdir -p "$OUT"

# --- Prometheus ---------------------------------------------------------------
step "Prometheus rules and config"
run "promtool check rules" "$PROMTOOL" check rules deploy/prometheus/alerts.yml
run "promtool test rules" "$PROMTOOL" test rules deploy/prometheus/alerts.test.yml
run "promtool check config" "$PROMTOOL" check config deploy/prometheus/prometheus.yml
run "alerts: runbooks, tests per alert" "$PY" deploy/check-deploy.py alerts

# --- metrics and dashboard ------------------------------------------------------
step "Metrics, dashboard"
run "metric names and labels are hookwire's" "$PY" deploy/check-deploy.py metrics
run "dashboard" "$PY" deploy/check-deploy.py dashboard
# metrics.py must work with the system's Python alone (no PyYAML).
run "metrics.py on plain python3" python3 deploy/grafana/metrics.py >/dev/null

# --- Kubernetes -----------------------------------------------------------------
step "Kubernetes (render.py, kubernetes-validate $K8S_VERSION --strict)"
validate() {
  local file=$1 log=$OUT/validate.log
  "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$file" >"$log" 2>&1 || { cat "$log" >&2; return 1; }
  # An object whose schema it does not know is only a warning there: not here.
  if grep -q . "$log"; then cat "$log" >&2; return 1; fi
}
same_as_kubectl() {
  local overlay=$1
  kubectl kustomize "deploy/k8s/overlays/$overlay" >"$OUT/kubectl-$overlay.yaml" &&
    "$PY" deploy/k8s/render.py --compare "$OUT/kubectl-$overlay.yaml" "deploy/k8s/overlays/$overlay"
}
for overlay in dev production; do
  rendered=$OUT/$overlay.yaml
  if "$PY" deploy/k8s/render.py "deploy/k8s/overlays/$overlay" -o "$rendered"; then
    echo "   ok: render $overlay ($(grep -c '^kind:' "$rendered") objects)"
    run "validate $overlay" validate "$rendered"
    run "structure $overlay" "$PY" deploy/check-deploy.py k8s "$rendered" "$overlay"
    if command -v kubectl >/dev/null 2>&1; then
      run "render.py = kubectl kustomize ($overlay)" same_as_kubectl "$overlay"
    else
      echo "   skipped: kubectl not installed (render.py not compared with kubectl kustomize)"
    fi
  else
    echo "   FAILED: render $overlay" >&2
    failed+=("render $overlay")
  fi
done
run "optional ServiceMonitor" "$PY" deploy/check-deploy.py servicemonitor

# --- Compose, Dockerfile ----------------------------------------------------------
step "Compose, Dockerfile"
run "compose.yaml" "$PY" deploy/check-deploy.py compose
run "Dockerfile" "$PY" deploy/check-deploy.py dockerfile

# --- hookwire itself on the configs -------------------------------------------------
step "hookwire check on the configs"
if [ -n "$HOOKWIRE" ]; then
  hookwire_check_with() {
    local envfile=$1 config=$2 vars
    mapfile -t vars <"$envfile"
    # A clean environment: only what the file lists.
    env -i PATH="$PATH" "${vars[@]}" "$HOOKWIRE" check --config "$config" >"$OUT/check.log" 2>&1 ||
      { cat "$OUT/check.log" >&2; return 1; }
  }
  "$PY" deploy/check-deploy.py env-compose >"$OUT/compose.env"
  run "hookwire check compose/hookwire.toml" hookwire_check_with "$OUT/compose.env" deploy/compose/hookwire.toml
  "$PY" deploy/check-deploy.py k8s-config "$OUT/production.yaml" >"$OUT/k8s-hookwire.toml"
  cat >"$OUT/k8s-valid.env" <<'EOF'
HOOKWIRE_ADMIN_TOKEN=check-deploy-token-0123456789
HOOKWIRE_SECRET_KEY=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f
HOOKWIRE_AMQP_URL=amqp://hookwire:pw@rabbitmq:5672/%2f
HOOKWIRE_EVENT_LOG_URL=postgres://hookwire:pw@postgres:5432/hookwire
EXAMPLE_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
EOF
  run "hookwire check on the k8s ConfigMap" hookwire_check_with "$OUT/k8s-valid.env" "$OUT/k8s-hookwire.toml"
  "$PY" deploy/check-deploy.py env-k8s-placeholders >"$OUT/k8s-placeholders.env"
  refuses_placeholders() { ! hookwire_check_with "$OUT/k8s-placeholders.env" "$OUT/k8s-hookwire.toml" 2>/dev/null; }
  run "the k8s Secret's placeholders are refused" refuses_placeholders
  run "deploy/README.md's hookwire commands parse" "$PY" deploy/check-deploy.py readme-commands "$HOOKWIRE"
else
  echo "   skipped: no target/release/hookwire or target/debug/hookwire"
fi

elapsed=$(($(date +%s) - started))
if [ ${#failed[@]} -gt 0 ]; then
  printf '\ncheck-deploy: %d check(s) FAILED in %ds:\n' "${#failed[@]}" "$elapsed" >&2
  printf '  - %s\n' "${failed[@]}" >&2
  exit 1
fi
printf '\ncheck-deploy: all checks passed in %ds\n' "$elapsed"
