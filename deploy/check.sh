#!/usr/bin/env bash
# Static checks of deploy/ (no Docker engine or cluster needed): promtool on the Prometheus
# configuration and alert rules; the Kubernetes manifests, the compose file and the Grafana
# provisioning parse as YAML with the fields they need; the dashboard parses as JSON; and every
# huddle_* metric the alerts and the dashboard use is one the server defines.
set -euo pipefail
cd "$(dirname "$0")"

command -v promtool >/dev/null || { echo "missing promtool: install the Debian package 'prometheus'"; exit 1; }
promtool check config prometheus/prometheus.yml
promtool check rules prometheus/alerts.yml

# PyYAML: the system's, else a throwaway virtualenv.
PY=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
  venv="$(mktemp -d)/venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet pyyaml
  PY="$venv/bin/python"
fi

"$PY" - <<'PYEOF'
import glob, json, re, sys, yaml

def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]

failures = []
def need(cond, what):
    if not cond:
        failures.append(what)

kinds = {}
for path in sorted(glob.glob("k8s/*.yaml")):
    for doc in load_all(path):
        for key in ("apiVersion", "kind", "metadata"):
            need(key in doc, f"{path}: no {key}")
        need(doc.get("metadata", {}).get("name"), f"{path}: no metadata.name")
        kinds[doc["kind"]] = doc
        print(f"{path}: {doc['kind']} {doc['metadata']['name']}")
for kind in ("Deployment", "Service", "ConfigMap", "Secret"):
    need(kind in kinds, f"k8s/: no {kind}")
if "Deployment" in kinds:
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    need(c["readinessProbe"]["httpGet"]["path"] == "/readyz", "readinessProbe is not /readyz")
    need(c["livenessProbe"]["httpGet"]["path"] == "/healthz", "livenessProbe is not /healthz")
    need(pod.get("hostNetwork") is True or any(p.get("protocol") == "UDP" for p in c["ports"]),
         "media needs hostNetwork or UDP ports")
    sel = kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    need(all(kinds["Deployment"]["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items()),
         "the Deployment's selector does not match its pod labels")
if "ConfigMap" in kinds:
    need("huddle.toml" in kinds["ConfigMap"]["data"], "the ConfigMap has no huddle.toml")

compose = load_all("docker-compose.yml")[0]
need(set(compose["services"]) >= {"huddle", "prometheus", "grafana"}, "docker-compose.yml: services")
print("docker-compose.yml: services", ", ".join(compose["services"]))
for path in glob.glob("grafana/provisioning/*/*.yml"):
    need(load_all(path)[0].get("apiVersion") == 1, f"{path}: apiVersion")
    print(f"{path}: ok")

with open("grafana/dashboards/huddle.json") as f:
    dash = json.load(f)
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
print(f"grafana/dashboards/huddle.json: {len(dash['panels'])} panels, {len(exprs)} queries")
with open("prometheus/alerts.yml") as f:
    exprs += [r["expr"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]]

# Metric names the server defines (string literals in the metrics modules).
defined = set()
for src in ("../media/src/metrics.rs", "../signaling/src/metrics.rs", "../src/metrics.rs"):
    with open(src) as f:
        defined |= set(re.findall(r'"(huddle_[a-z_]+)"', f.read()))
used = set()
for e in exprs:
    for m in re.findall(r"\bhuddle_[a-z_]+", e):
        used.add(re.sub(r"_(bucket|sum|count)$", "", m) if m not in defined else m)
unknown = sorted(used - defined)
need(not unknown, f"alerts or dashboard use metrics the server does not define: {unknown}")
print(f"{len(used)} huddle_* metrics used by alerts and dashboard, all defined")

# The cluster example (deploy/cluster): three nodes, Redis and PostgreSQL.
ckinds = set()
for path in sorted(glob.glob("cluster/k8s/*.yaml")):
    for doc in load_all(path):
        for key in ("apiVersion", "kind", "metadata"):
            need(key in doc, f"{path}: no {key}")
        ckinds.add((doc["kind"], doc["metadata"]["name"]))
        print(f"{path}: {doc['kind']} {doc['metadata']['name']}")
need(("StatefulSet", "huddle") in ckinds, "cluster/k8s: no huddle StatefulSet")
cc = load_all("cluster/docker-compose.yml")[0]
need(set(cc["services"]) >= {"huddle1", "huddle2", "huddle3", "redis", "postgres"},
     "cluster/docker-compose.yml: services")
for n in ("huddle1", "huddle2", "huddle3"):
    env = cc["services"][n]["environment"]
    need("HUDDLE_CLUSTER__REDIS_URL" in env and "HUDDLE_AUTH__SECRET" in env,
         f"cluster/docker-compose.yml: {n} lacks the cluster settings or the shared secret")
print("cluster/docker-compose.yml: services", ", ".join(cc["services"]))

if failures:
    print("\n".join("FAIL: " + f for f in failures))
    sys.exit(1)
PYEOF
# The ConfigMap's huddle.toml passes `huddle config check` (with a built binary).
bin="${HUDDLE_BIN:-../target/debug/huddle}"
if [ -x "$bin" ]; then
  tmp="$(mktemp)"
  "$PY" -c 'import yaml; print(yaml.safe_load(open("k8s/configmap.yaml"))["data"]["huddle.toml"])' > "$tmp"
  # As deployment.yaml does, media.public_ip comes from the environment (the node's address
  # there; a documentation address here), and `config check` reads it as `serve` would.
  HUDDLE_MEDIA__PUBLIC_IP=203.0.113.10 "$bin" config check "$tmp"
  rm -f "$tmp"
else
  echo "note: no huddle binary at $bin; the ConfigMap's huddle.toml was not checked"
fi
echo "deploy/: all checks passed"
