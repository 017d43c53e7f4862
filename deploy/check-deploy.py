#!/usr/bin/env python3
"""The checks of deploy/check-deploy.sh that need no external tool: the
compose file, the Dockerfile, the rendered Kubernetes objects, the dashboard,
the alerts' metadata and runbooks. Run by check-deploy.sh from its venv
(PyYAML); each subcommand prints what it checked and exits 1 on a failure.

    check-deploy.py compose | dockerfile | dashboard | alerts | metrics
    check-deploy.py k8s RENDERED.yaml OVERLAY_NAME
    check-deploy.py servicemonitor
    check-deploy.py env-compose | env-k8s-placeholders | k8s-config RENDERED.yaml
    check-deploy.py readme-commands HOOKWIRE_BINARY
"""

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
ADMIN_PORT = 9090
CONFIG_PATH = "/etc/hookwire/hookwire.toml"
RUNBOOK_BASE = "https://github.com/hookwire/hookwire/blob/main/README.md#"

problems = []


def check(condition, message):
    if not condition:
        problems.append(message)
    return condition


def finish(what):
    for problem in problems:
        print(f"  FAIL {problem}", file=sys.stderr)
    if problems:
        print(f"{what}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{what}: ok")
    return 0


def load_yaml(path):
    with open(path) as f:
        return yaml.safe_load(f)


# --- compose ------------------------------------------------------------------

HOOKWIRE_SERVICES = {"ingress-1": "ingress", "ingress-2": "ingress", "worker-1": "worker", "worker-2": "worker"}
RABBITMQ_SERVICES = ["rabbitmq-1", "rabbitmq-2", "rabbitmq-3"]
ALL_SERVICES = set(RABBITMQ_SERVICES) | {"postgres", "sink", "prometheus", "grafana"} | set(HOOKWIRE_SERVICES)


def mounts(service):
    """(source, target) of a compose service's short-syntax bind mounts."""
    out = []
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0].startswith("."):
            out.append((parts[0], parts[1]))
    return out


def compose():
    spec = load_yaml(DEPLOY / "compose.yaml")
    services = spec.get("services", {})
    check(ALL_SERVICES <= set(services), f"compose.yaml: missing services {sorted(ALL_SERVICES - set(services))}")
    for name, service in services.items():
        for source, _ in mounts(service):
            check((DEPLOY / source).exists(), f"compose.yaml: {name} mounts {source}, which does not exist")

    # RabbitMQ: three nodes of the official image, one cookie, classic_config.
    cookies = set()
    for name in RABBITMQ_SERVICES:
        service = services.get(name, {})
        check(service.get("image") == "rabbitmq:3.13-management", f"compose.yaml: {name} image is {service.get('image')}")
        check(service.get("hostname") == name, f"compose.yaml: {name} needs hostname {name} (its node name is rabbit@{name})")
        cookies.add(service.get("environment", {}).get("RABBITMQ_ERLANG_COOKIE"))
        check(("./compose/rabbitmq.conf", "/etc/rabbitmq/rabbitmq.conf") in mounts(service),
              f"compose.yaml: {name} does not mount compose/rabbitmq.conf at /etc/rabbitmq/rabbitmq.conf")
    check(len(cookies) == 1 and None not in cookies, "compose.yaml: the RabbitMQ nodes do not share one Erlang cookie")
    conf = (DEPLOY / "compose" / "rabbitmq.conf").read_text()
    check(re.search(r"^cluster_formation\.peer_discovery_backend\s*=\s*classic_config\s*$", conf, re.M),
          "rabbitmq.conf: peer discovery backend is not classic_config")
    nodes = set(re.findall(r"^cluster_formation\.classic_config\.nodes\.\d+\s*=\s*(\S+)\s*$", conf, re.M))
    check(nodes == {f"rabbit@{n}" for n in RABBITMQ_SERVICES}, f"rabbitmq.conf: classic_config nodes are {sorted(nodes)}")

    check(services.get("postgres", {}).get("image") == "postgres:16", "compose.yaml: postgres must be postgres:16")

    # hookwire: the image from deploy/Dockerfile, each role's command, the config.
    for name, role in HOOKWIRE_SERVICES.items():
        service = services.get(name, {})
        build = service.get("build", {})
        check(build.get("dockerfile") == "deploy/Dockerfile" and (DEPLOY / build.get("context", "")).resolve() == ROOT,
              f"compose.yaml: {name} must build deploy/Dockerfile with the repository as context")
        expected = ["serve", "--config", CONFIG_PATH, "--role", role]
        check(service.get("command") == expected, f"compose.yaml: {name} command is {service.get('command')}, expected {expected}")
        check(("./compose/hookwire.toml", CONFIG_PATH) in [(s, t) for s, t in mounts(service)],
              f"compose.yaml: {name} does not mount compose/hookwire.toml at {CONFIG_PATH}")
    sink = services.get("sink", {})
    check(sink.get("command") == ["sink", "--listen", "0.0.0.0:9000"], f"compose.yaml: sink command is {sink.get('command')}")
    check(sink.get("healthcheck", {}).get("disable") is True, "compose.yaml: the sink has no admin listener: disable the image's healthcheck")
    check(sink.get("build", {}).get("dockerfile") == "deploy/Dockerfile", "compose.yaml: sink must run the deploy/Dockerfile image")

    # The config every hookwire container reads.
    config = tomllib.loads((DEPLOY / "compose" / "hookwire.toml").read_text())
    check(config.get("admin", {}).get("listen") == f"0.0.0.0:{ADMIN_PORT}", "compose/hookwire.toml: admin.listen must be 0.0.0.0:9090")
    check(config.get("ingress", {}).get("listen") == "0.0.0.0:8080", "compose/hookwire.toml: ingress.listen must be 0.0.0.0:8080")
    urls = config.get("rabbitmq", {}).get("url", [])
    check(isinstance(urls, list) and [re.sub(r".*@([^:/]+).*", r"\1", u) for u in urls] == RABBITMQ_SERVICES,
          f"compose/hookwire.toml: rabbitmq.url must list the three nodes, got {urls}")
    check(all("${" in u for u in urls), "compose/hookwire.toml: the broker password must come from the environment")
    log = config.get("event_log", {})
    check(log.get("backend") == "postgres" and "@postgres:5432/" in log.get("url", "") and "${" in log.get("url", ""),
          "compose/hookwire.toml: event_log must be postgres at postgres:5432 with the password from the environment")
    sinks = [s.get("url", "") for s in config.get("subscriptions", {}).values()]
    check(sinks and all(u.startswith("http://sink:9000/") for u in sinks), "compose/hookwire.toml: subscriptions must deliver to the sink")

    # Prometheus scrapes every hookwire container's admin port and loads the rules.
    prometheus = services.get("prometheus", {})
    check(("./prometheus/prometheus.yml", "/etc/prometheus/prometheus.yml") in mounts(prometheus)
          and ("./prometheus/alerts.yml", "/etc/prometheus/alerts.yml") in mounts(prometheus),
          "compose.yaml: prometheus must mount prometheus.yml and alerts.yml side by side in /etc/prometheus")
    scrape = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    targets = set()
    for job in scrape.get("scrape_configs", []):
        if job.get("metrics_path", "/metrics") == "/metrics":
            for static in job.get("static_configs", []):
                targets.update(static.get("targets", []))
    wanted = {f"{name}:{ADMIN_PORT}" for name in HOOKWIRE_SERVICES}
    check(wanted <= targets, f"prometheus.yml: not scraped: {sorted(wanted - targets)}")
    check("alerts.yml" in scrape.get("rule_files", []), "prometheus.yml: rule_files must load alerts.yml")

    # Grafana: the provisioned data source and dashboard.
    grafana = services.get("grafana", {})
    grafana_mounts = dict((t, s) for s, t in mounts(grafana))
    datasources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")["datasources"]
    check(any(d.get("type") == "prometheus" and d.get("url") == "http://prometheus:9090" for d in datasources),
          "grafana datasource: must point at http://prometheus:9090")
    providers = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "hookwire.yaml")["providers"]
    path = providers[0]["options"]["path"]
    check(grafana_mounts.get(f"{path}/hookwire.json") == "./grafana/hookwire.json",
          f"compose.yaml: grafana must mount grafana/hookwire.json in {path}, the provider's path")
    check(grafana_mounts.get("/etc/grafana/provisioning/datasources") == "./grafana/provisioning/datasources"
          and grafana_mounts.get("/etc/grafana/provisioning/dashboards") == "./grafana/provisioning/dashboards",
          "compose.yaml: grafana must mount the provisioning directories")
    return finish("compose")


def compose_env():
    """KEY=VALUE lines: the hookwire containers' environment with compose's
    ${VAR:-default} defaults, for `hookwire check` on compose/hookwire.toml."""
    spec = load_yaml(DEPLOY / "compose.yaml")
    env = spec["services"]["ingress-1"]["environment"]
    for key, value in env.items():
        value = re.sub(r"\$\{[A-Za-z_]\w*:-([^}]*)\}", r"\1", str(value))
        print(f"{key}={value}")
    return 0


# --- Dockerfile ---------------------------------------------------------------

def dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [l for l in re.sub(r"\\\n", " ", text).splitlines() if l.strip() and not l.lstrip().startswith("#")]
    instructions = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if len(l.split(None, 1)) > 1 else "") for l in lines]
    froms = [args for op, args in instructions if op == "FROM"]
    check(len(froms) >= 2, "Dockerfile: not a multi-stage build")
    check(froms and re.match(r"rust:1-bookworm\s+AS\s+build$", froms[0], re.I), f"Dockerfile: first stage is {froms[:1]}")
    check(froms and froms[-1].split()[0] == "debian:bookworm-slim", f"Dockerfile: runtime stage is {froms[-1:]}")
    runs = " ".join(args for op, args in instructions if op == "RUN")
    check("cargo build --release --locked" in runs, "Dockerfile: no `cargo build --release --locked`")
    check(re.search(r"apt-get install[^&]*\bca-certificates\b", runs) and re.search(r"apt-get install[^&]*\bcurl\b", runs),
          "Dockerfile: the runtime needs ca-certificates and curl")
    copies = [args for op, args in instructions if op == "COPY"]
    copied = " ".join(copies)
    for needed in ("Cargo.toml", "Cargo.lock", "src"):
        check(re.search(rf"(^|\s){re.escape(needed)}(\s|$)", copied), f"Dockerfile: does not copy {needed}")
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    for bench in manifest.get("bench", []):
        path = bench.get("path") or next((p for p in (f"benches/{bench['name']}.rs", f"benches/{bench['name']}/main.rs")
                                          if (ROOT / p).exists()), None)
        check(path is not None and (ROOT / path).exists(), f"Cargo.toml: bench {bench['name']} has no file")
        check(path is not None and any(re.search(rf"(^|\s){re.escape(path.split('/')[0])}/?(\s|$)", c) for c in copies),
              f"Dockerfile: cargo needs {path} to read Cargo.toml ([[bench]] {bench['name']}) but it is not copied")
    # Files the crate embeds (include_str!/include_bytes!, relative to the
    # including file) must be in the build context the build stage copies.
    for source in sorted((ROOT / "src").rglob("*.rs")):
        for embedded in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', source.read_text()):
            path = (source.parent / embedded).resolve().relative_to(ROOT).as_posix()
            check(any(path == part or path.startswith(part.rstrip("/") + "/")
                      for c in copies for part in c.split()[:-1]),
                  f"Dockerfile: {source.relative_to(ROOT)} embeds {path}, which is not copied")
    users = [args.strip() for op, args in instructions if op == "USER"]
    check(users and users[-1].split(":")[0] not in ("root", "0"), f"Dockerfile: the final USER is {users[-1:] or 'root'}")
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    check(any(op == "USER" for op, _ in instructions[last_from:]), "Dockerfile: no USER in the runtime stage")
    check(any(op == "COPY" and "--from=build" in args and "hookwire" in args for op, args in instructions[last_from:]),
          "Dockerfile: the runtime stage must copy the hookwire binary from the build stage")
    health = [args for op, args in instructions if op == "HEALTHCHECK"]
    check(health and f"http://127.0.0.1:{ADMIN_PORT}/healthz" in health[-1], f"Dockerfile: HEALTHCHECK is {health}")
    entry = [args for op, args in instructions if op == "ENTRYPOINT"]
    cmd = [args for op, args in instructions if op == "CMD"]
    check(entry and json.loads(entry[-1]) == ["hookwire"], f"Dockerfile: ENTRYPOINT is {entry}")
    check(cmd and json.loads(cmd[-1]) == ["serve", "--config", CONFIG_PATH], f"Dockerfile: CMD is {cmd}")
    ignore_file = ROOT / ".dockerignore"
    ignore = [l.strip() for l in ignore_file.read_text().splitlines() if l.strip() and not l.startswith("#")] \
        if ignore_file.exists() else []
    for needed in ("src", "benches", "Cargo.toml", "Cargo.lock"):
        check(not any(p.strip("/") == needed for p in ignore), f".dockerignore: excludes {needed}, which the build copies")
    return finish("Dockerfile")


# --- Kubernetes ---------------------------------------------------------------

def by_kind(objects, kind):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def k8s(rendered, overlay):
    with open(rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    pdbs = by_kind(objects, "PodDisruptionBudget")
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    configmaps = by_kind(objects, "ConfigMap")
    secrets = by_kind(objects, "Secret")
    namespaces = {o.get("metadata", {}).get("namespace") for o in objects if o["kind"] != "Namespace"}
    check(len(namespaces) == 1 and None not in namespaces, f"{overlay}: objects in namespaces {namespaces}")
    check("hookwire-config" in configmaps and "hookwire.toml" in configmaps.get("hookwire-config", {}).get("data", {}),
          f"{overlay}: no ConfigMap hookwire-config with hookwire.toml")
    check("hookwire-secrets" in secrets, f"{overlay}: no Secret hookwire-secrets")
    for role in ("ingress", "worker"):
        name = f"hookwire-{role}"
        deployment = deployments.get(name)
        if not check(deployment is not None, f"{overlay}: no Deployment {name}"):
            continue
        pod = deployment["spec"]["template"]["spec"]
        container = next((c for c in pod["containers"] if c["name"] == "hookwire"), {})
        check(container.get("args") == ["serve", "--config", CONFIG_PATH, "--role", role], f"{overlay}: {name} args are {container.get('args')}")
        check(":" in container.get("image", "") or "@" in container.get("image", ""), f"{overlay}: {name} image {container.get('image')} has no tag")
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        check(ports.get("admin") == ADMIN_PORT, f"{overlay}: {name} admin port is {ports.get('admin')}")
        if role == "ingress":
            check(ports.get("http") == 8080, f"{overlay}: {name} http port is {ports.get('http')}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = container.get(probe, {}).get("httpGet", {})
            check(get.get("path") == path and get.get("port") in ("admin", ADMIN_PORT), f"{overlay}: {name} {probe} is {get}")
        resources = container.get("resources", {})
        check(resources.get("requests", {}).get("cpu") and resources.get("requests", {}).get("memory")
              and resources.get("limits", {}).get("memory"), f"{overlay}: {name} needs cpu/memory requests and a memory limit")
        check(pod.get("securityContext", {}).get("runAsNonRoot") is True, f"{overlay}: {name} must run as non-root")
        mounts_ = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        check(mounts_.get("config") == "/etc/hookwire" and volumes.get("config", {}).get("configMap", {}).get("name") == "hookwire-config",
              f"{overlay}: {name} must mount ConfigMap hookwire-config at /etc/hookwire")
        check(any(e.get("secretRef", {}).get("name") == "hookwire-secrets" for e in container.get("envFrom", [])),
              f"{overlay}: {name} must take its environment from Secret hookwire-secrets")
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        check(all(labels.get(k) == v for k, v in selector.items()), f"{overlay}: {name} selector does not match its pods")
        pdb = pdbs.get(name)
        check(pdb is not None and pdb["spec"]["selector"]["matchLabels"] == selector, f"{overlay}: no PodDisruptionBudget {name} selecting its pods")
        hpa = hpas.get(name)
        check(hpa is not None and hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
              f"{overlay}: no HorizontalPodAutoscaler {name} targeting it")
        check("replicas" not in deployment["spec"], f"{overlay}: {name} sets replicas, which its HorizontalPodAutoscaler owns")
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for name, service in services.items():
        selector = service["spec"].get("selector", {})
        check(any(all(p.get(k) == v for k, v in selector.items()) for p in pods), f"{overlay}: Service {name} selects no pods")
    check("hookwire-ingress" in services and "hookwire-admin" in services, f"{overlay}: Services hookwire-ingress and hookwire-admin needed")
    return finish(f"k8s {overlay}")


def k8s_config(rendered):
    """Writes the rendered ConfigMap's hookwire.toml to stdout."""
    with open(rendered) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    sys.stdout.write(by_kind(objects, "ConfigMap")["hookwire-config"]["data"]["hookwire.toml"])
    return 0


def k8s_placeholders():
    """KEY=VALUE lines of the base Secret's placeholders."""
    secret = load_yaml(DEPLOY / "k8s" / "base" / "secret.yaml")
    for key, value in secret["stringData"].items():
        print(f"{key}={value}")
    return 0


def servicemonitor():
    monitor = load_yaml(DEPLOY / "k8s" / "optional" / "servicemonitor.yaml")
    services = {}
    with open(DEPLOY / "k8s" / "base" / "services.yaml") as f:
        for o in yaml.safe_load_all(f):
            if o:
                services[o["metadata"]["name"]] = o
    check(monitor.get("apiVersion") == "monitoring.coreos.com/v1" and monitor.get("kind") == "ServiceMonitor",
          "servicemonitor.yaml: not a monitoring.coreos.com/v1 ServiceMonitor")
    selector = monitor.get("spec", {}).get("selector", {}).get("matchLabels", {})
    selected = [s for s in services.values() if all(s["metadata"].get("labels", {}).get(k) == v for k, v in selector.items())]
    check(len(selected) == 1, f"servicemonitor.yaml: selects {len(selected)} of the base Services, expected the admin one")
    for endpoint in monitor.get("spec", {}).get("endpoints", []):
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        check(endpoint.get("port") in ports and endpoint.get("path") == "/metrics",
              f"servicemonitor.yaml: endpoint {endpoint} is not the admin port's /metrics")
    base = load_yaml(DEPLOY / "k8s" / "base" / "kustomization.yaml")
    check(not any("servicemonitor" in r.lower() for r in base.get("resources", [])), "servicemonitor.yaml must not be in the base")
    return finish("servicemonitor")


# --- metrics, dashboard, alerts -----------------------------------------------

def readme_metrics():
    """{name: (type, {labels})} from the README's metrics table."""
    table = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"^\| `(hookwire_\w+)` \| (\w+) \| ([^|]*) \|", line)
        if match:
            labels = set(re.findall(r"`(\w+)`", match.group(3)))
            table[match.group(1)] = (match.group(2), labels)
    return table


def telemetry_metrics():
    return set(re.findall(r'pub const \w+: &str = "(hookwire_\w+)";', (ROOT / "src" / "telemetry.rs").read_text()))


def metrics():
    """Every metric the dashboard and the alerts name is one hookwire exports
    (src/telemetry.rs and the README's table), a histogram suffix only on a
    histogram, and every label in their selectors and groupings is one the
    README gives that metric (plus instance and job, and le on _bucket)."""
    sys.path.insert(0, str(DEPLOY / "grafana"))
    import metrics as extractor  # deploy/grafana/metrics.py

    exported = telemetry_metrics()
    table = readme_metrics()
    check(exported == set(table), f"README metrics table and src/telemetry.rs differ: {sorted(exported ^ set(table))}")
    expressions = extractor.dashboard_expressions(DEPLOY / "grafana" / "hookwire.json") + \
        extractor.rule_expressions(DEPLOY / "prometheus" / "alerts.yml")
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    yaml_exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    check([" ".join(e.split()) for e in extractor.rule_expressions(DEPLOY / "prometheus" / "alerts.yml")]
          == [" ".join(e.split()) for e in yaml_exprs], "metrics.py reads alerts.yml's expressions differently from a YAML parser")
    out = subprocess.run([sys.executable, str(DEPLOY / "grafana" / "metrics.py")], capture_output=True, text=True, check=False)
    check(out.returncode == 0 and out.stdout.strip(), f"metrics.py failed: {out.stderr}")
    for line in out.stdout.splitlines():
        name, base = line.split("\t")
        check(base in exported, f"{name}: {base} is not a metric hookwire exports")
        if name != base:
            check(table.get(base, ("",))[0] == "histogram", f"{name}: {base} is not a histogram")
    for expr in expressions:
        flat = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
        for name, matchers in re.findall(r"\b(hookwire_\w+)\s*\{([^}]*)\}", flat):
            base = extractor.base(name)
            allowed = table.get(base, ("", set()))[1] | {"instance", "job"} | ({"le"} if name.endswith("_bucket") else set())
            for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers):
                check(label in allowed, f"{name}{{{label}=...}}: {base} has no label {label}")
        # Grouping labels must exist on at least one metric of the expression.
        names = [extractor.base(n) for n in extractor.metric_names(expr)]
        known = set().union(*(table.get(n, ("", set()))[1] for n in names)) | {"instance", "job", "le"}
        for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", flat):
            for label in filter(None, (l.strip() for l in group.split(","))):
                check(label in known, f"`{group}` in {' '.join(expr.split())[:80]}...: no metric there has label {label}")
    print(f"  {len(out.stdout.splitlines())} metric names in {len(expressions)} expressions")
    return finish("metrics")


def dashboard():
    board = json.loads((DEPLOY / "grafana" / "hookwire.json").read_text())
    variables = {v["name"]: v for v in board.get("templating", {}).get("list", [])}
    check(variables.get("DS_PROMETHEUS", {}).get("type") == "datasource", "dashboard: no DS_PROMETHEUS data source variable")
    sub = variables.get("subscription", {})
    check(sub.get("type") == "query" and "subscription" in json.dumps(sub.get("query")), "dashboard: no `subscription` query variable")
    panels = []

    def collect(items):
        for p in items:
            if p.get("type") == "row":
                collect(p.get("panels", []))
            else:
                panels.append(p)
    collect(board.get("panels", []))
    exprs = []
    for panel in panels:
        ds = panel.get("datasource", {})
        check(ds.get("uid") == "${DS_PROMETHEUS}", f"dashboard: panel {panel.get('title')!r} does not use ${{DS_PROMETHEUS}}")
        check(panel.get("targets"), f"dashboard: panel {panel.get('title')!r} has no query")
        for target in panel.get("targets", []):
            check(target.get("datasource", {}).get("uid") == "${DS_PROMETHEUS}", f"dashboard: a query of {panel.get('title')!r} does not use ${{DS_PROMETHEUS}}")
            exprs.append(target.get("expr", ""))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)), "dashboard: panel ids repeat")
    everything = "\n".join(exprs)
    wanted = {
        "ingress rate and outcomes": r"sum by \(outcome\) \(rate\(hookwire_ingress_requests_total",
        "publish latency": r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(hookwire_publish_duration_seconds_bucket",
        "deliveries by outcome": r"sum by \(subscription, outcome\) \(rate\(hookwire_deliveries_total",
        "end-to-end p50": r"histogram_quantile\(0\.5, sum by \(subscription, le\) \(rate\(hookwire_end_to_end_seconds_bucket",
        "end-to-end p99": r"histogram_quantile\(0\.99, sum by \(subscription, le\) \(rate\(hookwire_end_to_end_seconds_bucket",
        "in-flight (queue side)": r"hookwire_deliveries_in_flight",
        "DLQ growth": r"increase\(hookwire_dead_lettered_total",
        "circuit state": r"hookwire_circuit_open",
        "broker connection": r"hookwire_broker_connected",
        "broker reconnects": r"hookwire_broker_reconnects_total",
        "per subscription": r'subscription=~"\$subscription"',
    }
    for what, pattern in wanted.items():
        check(re.search(pattern, everything), f"dashboard: no panel for {what}")
    print(f"  {len(panels)} panels, {len(exprs)} queries")
    return finish("dashboard")


def github_anchor(heading):
    """GitHub's heading anchor: lowercase, punctuation dropped, spaces to -."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def alerts():
    rules = load_yaml(DEPLOY / "prometheus" / "alerts.yml")
    names = [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]
    tests = load_yaml(DEPLOY / "prometheus" / "alerts.test.yml")
    firing, quiet = set(), set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    # The runbooks live in the top-level README (runbook_url points there).
    readme = (ROOT / "README.md").read_text()
    headings = {github_anchor(h): h for h in re.findall(r"^### (Alert: .+)$", readme, re.M)}
    for g in rules["groups"]:
        for rule in g["rules"]:
            name = rule.get("alert")
            if not name:
                continue
            anchor = f"alert-{name.lower()}"
            check(rule.get("annotations", {}).get("runbook_url") == RUNBOOK_BASE + anchor,
                  f"alerts.yml: {name} runbook_url is not {RUNBOOK_BASE + anchor}")
            check(anchor in headings, f"README.md: no `### Alert: {name}` section (anchor #{anchor})")
            check(rule.get("labels", {}).get("severity"), f"alerts.yml: {name} has no severity")
            check(name in firing, f"alerts.test.yml: no case where {name} fires")
            check(name in quiet, f"alerts.test.yml: no case where {name} stays quiet")
    extra = set(h for h in headings) - {f"alert-{n.lower()}" for n in names}
    check(not extra, f"README.md: runbooks for alerts that do not exist: {sorted(extra)}")
    # The runbooks' hookwire commands must be ones src/main.rs defines.
    main = (ROOT / "src" / "main.rs").read_text()
    commands = {c.lower() for c in re.findall(r"^\s{4}(\w+)\s*\{", main, re.M)} | {"sink", "check", "serve"}
    start = readme.find("## Alert runbooks")
    runbooks = readme[start:readme.find("\n## ", start + 1)] if start >= 0 else ""
    for line in re.findall(r"`hookwire ([a-z-]+)", runbooks):
        check(line in commands, f"README.md (alert runbooks): `hookwire {line}` is not a hookwire command")
    print(f"  {len(names)} alerts: {', '.join(names)}")
    return finish("alerts")


def readme_commands(binary):
    """Every `hookwire ...` command line in deploy/README.md's shell blocks
    and the top-level README's alert runbooks
    parses: run against an admin URL where nothing listens, a command may
    fail to connect or to read a file, never with a usage error (exit 2)."""
    import os
    readme = (DEPLOY / "README.md").read_text()
    # And the alert runbooks, which live in the top-level README.
    top = (ROOT / "README.md").read_text()
    start = top.find("## Alert runbooks")
    runbooks = top[start:top.find("\n## ", start + 1)] if start >= 0 else ""
    check(bool(runbooks), "README.md: no `## Alert runbooks` section")
    blocks = re.findall(r"```sh\n(.*?)```", readme + runbooks, re.S)
    env = dict(os.environ, HOOKWIRE_ADMIN_URL="http://127.0.0.1:9", HOOKWIRE_ADMIN_TOKEN="check-deploy-placeholder")
    count = 0
    for block in blocks:
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            line = re.sub(r"^(HOOKWIRE_\w+=\S+\s+)+", "", line)
            match = re.match(r"^(?:target/release/)?hookwire\s+(.*?)(?:\s*\|.*)?$", line)
            if not match:
                continue
            argv = [binary] + shlex.split(match.group(1))
            try:
                result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=20, cwd=ROOT)
            except subprocess.TimeoutExpired:
                check(False, f"deploy/README.md: `{line}` did not finish")
                continue
            count += 1
            check(result.returncode != 2, f"deploy/README.md: `{line}` does not parse: {result.stderr.strip()[:300]}")
    check(count > 0, "deploy/README.md: no hookwire commands found")
    print(f"  {count} command lines parse")
    return finish("README commands")


COMMANDS = {
    "compose": compose, "env-compose": compose_env, "dockerfile": dockerfile, "dashboard": dashboard,
    "alerts": alerts, "metrics": metrics, "servicemonitor": servicemonitor, "env-k8s-placeholders": k8s_placeholders,
}

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "k8s":
        sys.exit(k8s(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 3 and sys.argv[1] == "readme-commands":
        sys.exit(readme_commands(sys.argv[2]))
    if len(sys.argv) == 3 and sys.argv[1] == "k8s-config":
        sys.exit(k8s_config(sys.argv[2]))
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(COMMANDS[sys.argv[1]]())
