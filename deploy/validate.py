"""Checks deploy/ offline: run by deploy/validate.sh inside its venv (kubernetes-validate,
check-jsonschema). Exits non-zero on the first kind of problem it finds, after listing them all.

1. Every Kubernetes manifest under deploy/kubernetes/ against the Kubernetes JSON schemas that
   kubernetes-validate bundles, strict (an unknown field is an error), for each version in
   K8S_VERSIONS. A kind or apiVersion without a schema is an error too, not a warning.
2. kustomization.yaml lists exactly the manifests beside it; with kubectl on the machine, its
   rendering (`kubectl kustomize`) is validated as well.
3. What schemas cannot see: selectors that select the pods they are meant to, names that refer
   to objects that exist, probe paths, the shutdown budget, and variable names that README.md's
   configuration table documents.
4. The compose files against the Compose specification's schema (check-jsonschema's vendored
   copy), and the scale example's gateway publishes no host port (or it could not scale).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from kubernetes_validate import utils as kv

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE_FILES = [ROOT / "docker-compose.yml", ROOT / "deploy" / "compose" / "docker-compose.scale.yml"]
# The oldest Kubernetes release these manifests claim to support, and the newest schemas bundled.
K8S_VERSIONS = os.environ.get("K8S_VERSIONS", "1.29,latest").split(",")
# preStop, then the drain: what terminationGracePeriodSeconds must cover, plus this margin.
GRACE_MARGIN_SECONDS = 5

errors: list[str] = []


def error(msg: str) -> None:
    errors.append(msg)
    print(f"ERROR {msg}")


def load_docs(path: Path) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError as e:
        error(f"{path.relative_to(ROOT)}: not YAML: {e}")
        return []
    for d in docs:
        if not isinstance(d, dict):
            error(f"{path.relative_to(ROOT)}: a document is not a mapping")
    return [d for d in docs if isinstance(d, dict)]


def schema_check(label: str, docs: list[dict]) -> None:
    for doc in docs:
        kind = doc.get("kind", "?")
        name = (doc.get("metadata") or {}).get("name", "?")
        passed = []
        for version in K8S_VERSIONS:
            v = kv.latest_version() if version == "latest" else version
            try:
                got = kv.validate(doc, v, strict=True)
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                error(f"{label}: {kind}/{name} (Kubernetes {e.version}): {path}: {e.message}")
                continue
            except kv.SchemaNotFoundError:
                error(f"{label}: {kind}/{name}: no schema for kind {kind} in "
                      f"{doc.get('apiVersion')!r} (Kubernetes {kv.major_minor(v)}): a typo, or an API this "
                      "version does not serve")
                continue
            except (kv.VersionNotSupportedError, kv.InvalidSchemaError, KeyError, TypeError) as e:
                error(f"{label}: {kind}/{name}: cannot validate: {e!r}")
                continue
            passed.append(got)
        if len(passed) == len(K8S_VERSIONS):
            print(f"ok    {label}: {kind}/{name} (Kubernetes {', '.join(passed)}; strict)")


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def selects(selector: dict | None, labels: dict | None) -> bool:
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def readme_variables() -> set[str]:
    names = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`([A-Z][A-Z0-9_]+)`", line)
        if m:
            names.add(m.group(1))
        # Rows that document several names at once: | `DEBUG`, `DEBUG_MODE` | ...
        if line.startswith("| `"):
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def consistency(docs: list[dict]) -> None:
    deployments = by_kind(docs, "Deployment")
    statefulsets = by_kind(docs, "StatefulSet")
    workloads = deployments + statefulsets
    configmaps = {d["metadata"]["name"]: d for d in by_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"]: d for d in by_kind(docs, "Secret")}
    names = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs}
    if len(names) != len(docs):
        error("kubernetes: two objects share one kind and name")

    def secret_keys(s: dict) -> set[str]:
        return set((s.get("data") or {}).keys()) | set((s.get("stringData") or {}).keys())

    for w in workloads:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        spec = w["spec"]
        pod_labels = spec["template"]["metadata"].get("labels")
        if not selects(spec["selector"].get("matchLabels"), pod_labels):
            error(f"{wname}: selector does not match its own pod labels")
        for c in spec["template"]["spec"]["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    error(f"{wname}: {probe} names port {port!r}, which the container lacks")
            for ref in c.get("envFrom", []):
                if "configMapRef" in ref and ref["configMapRef"]["name"] not in configmaps:
                    error(f"{wname}: envFrom names ConfigMap {ref['configMapRef']['name']!r}, not defined")
                if "secretRef" in ref and ref["secretRef"]["name"] not in secrets:
                    error(f"{wname}: envFrom names Secret {ref['secretRef']['name']!r}, not defined")
            for env in c.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and (ref["name"] not in secrets or ref["key"] not in secret_keys(secrets[ref["name"]])):
                    error(f"{wname}: env {env['name']} names secret key {ref['name']}/{ref['key']}, not defined")

    # The gateway: the Deployment whose pods the HPA scales.
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    if len(deployments) != 1 or len(hpas) != 1:
        error("kubernetes: expected one gateway Deployment and one HorizontalPodAutoscaler")
        return
    gw, hpa = deployments[0], hpas[0]
    gw_spec = gw["spec"]
    pod = gw_spec["template"]["spec"]
    pod_labels = gw_spec["template"]["metadata"]["labels"]
    container = pod["containers"][0]

    target = hpa["spec"]["scaleTargetRef"]
    if (target["kind"], target["name"]) != ("Deployment", gw["metadata"]["name"]):
        error(f"HorizontalPodAutoscaler: scales {target['kind']}/{target['name']}, not the gateway")
    if hpa["spec"].get("minReplicas", 1) < 2:
        error("HorizontalPodAutoscaler: minReplicas below 2 leaves no pod serving during a drain")
    if "replicas" in gw_spec and gw_spec["replicas"] < hpa["spec"].get("minReplicas", 1):
        error("Deployment: replicas below the HPA's minReplicas")
    if not ((container.get("resources") or {}).get("requests") or {}).get("cpu"):
        error("Deployment: the HPA scales on CPU utilization, which needs a CPU request")

    for kind in ("Service", "PodDisruptionBudget"):
        objs = [d for d in by_kind(docs, kind) if d["metadata"]["name"] == gw["metadata"]["name"]]
        if len(objs) != 1:
            error(f"{kind}: none named {gw['metadata']['name']!r} for the gateway")
            continue
        spec = objs[0]["spec"]
        sel = spec["selector"] if kind == "Service" else spec["selector"].get("matchLabels")
        if not selects(sel, pod_labels):
            error(f"{kind}/{objs[0]['metadata']['name']}: selector does not select the gateway's pods")
        if kind == "Service":
            ports = {p.get("name") for p in container.get("ports", [])}
            for p in spec["ports"]:
                if isinstance(p.get("targetPort"), str) and p["targetPort"] not in ports:
                    error(f"Service: targetPort {p['targetPort']!r} is no port of the gateway")
    for np in by_kind(docs, "NetworkPolicy"):
        for rule in np["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and not any(
                    selects(peer["podSelector"].get("matchLabels"), w["spec"]["template"]["metadata"].get("labels"))
                    for w in workloads
                ):
                    error(f"NetworkPolicy/{np['metadata']['name']}: a podSelector selects no pod defined here")
        if not any(selects(np["spec"]["podSelector"].get("matchLabels"), w["spec"]["template"]["metadata"].get("labels"))
                   for w in workloads):
            error(f"NetworkPolicy/{np['metadata']['name']}: protects no pod defined here")

    # Probes: liveness on /health/live (the process serves), readiness on /health (503 while
    # draining), so a draining pod is taken out of rotation but not restarted.
    live = ((container.get("livenessProbe") or {}).get("httpGet") or {}).get("path")
    ready = ((container.get("readinessProbe") or {}).get("httpGet") or {}).get("path")
    if live != "/health/live":
        error(f"Deployment: livenessProbe path {live!r}, expected '/health/live'")
    if ready != "/health":
        error(f"Deployment: readinessProbe path {ready!r}, expected '/health'")

    # The shutdown budget: preStop sleep + SHUTDOWN_GRACE_SECONDS + margin within the grace period.
    env: dict[str, str] = {}
    for ref in container.get("envFrom", []):
        if "configMapRef" in ref and ref["configMapRef"]["name"] in configmaps:
            env.update(configmaps[ref["configMapRef"]["name"]].get("data") or {})
        if "secretRef" in ref and ref["secretRef"]["name"] in secrets:
            env.update({k: "(secret)" for k in secret_keys(secrets[ref["secretRef"]["name"]])})
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", "(ref)")
    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {})
    sleep = 0
    cmd = (pre_stop.get("exec") or {}).get("command") or []
    if cmd[:1] == ["sleep"] and len(cmd) == 2 and cmd[1].isdigit():
        sleep = int(cmd[1])
    elif "sleep" in pre_stop:
        sleep = int(pre_stop["sleep"]["seconds"])
    else:
        error("Deployment: preStop is not a plain sleep; cannot check the shutdown budget")
    drain = int(env.get("SHUTDOWN_GRACE_SECONDS", "30"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace < sleep + drain + GRACE_MARGIN_SECONDS:
        error(f"Deployment: terminationGracePeriodSeconds {grace} < preStop {sleep} + "
              f"SHUTDOWN_GRACE_SECONDS {drain} + {GRACE_MARGIN_SECONDS}: streams would be killed")
    if env.get("LISTEN_ADDR", "").rsplit(":", 1)[-1] != str(container["ports"][0]["containerPort"]):
        error("Deployment: LISTEN_ADDR's port is not the container port")

    # Every variable handed to the gateway is one README documents (a typo is silently ignored
    # by the gateway, so catch it here).
    documented = readme_variables()
    for name in sorted(env):
        if name not in documented:
            error(f"gateway environment: {name} is not a variable in README.md's configuration table")
    for name in ("GEMINI_API_KEYS", "ALLOWED_TOKENS", "ADMIN_TOKEN", "REDIS_URL"):
        if env.get(name) != "(secret)":
            error(f"gateway environment: {name} must come from the Secret")
        for cm in configmaps.values():
            if name in (cm.get("data") or {}):
                error(f"ConfigMap/{cm['metadata']['name']}: {name} is a secret; keep it in the Secret only")


def kustomization(manifests: list[Path]) -> None:
    kfile = K8S_DIR / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    listed = k.get("resources", [])
    on_disk = sorted(p.name for p in manifests)
    for r in listed:
        if not (K8S_DIR / r).is_file():
            error(f"kustomization.yaml: resource {r} does not exist")
    for name in on_disk:
        if name not in listed:
            error(f"kustomization.yaml: {name} is not listed in resources")
    kubectl = shutil.which("kubectl")
    if not kubectl:
        print("skip  kubectl kustomize (no kubectl here); the files were validated one by one")
        return
    out = subprocess.run([kubectl, "kustomize", str(K8S_DIR)], capture_output=True, text=True)
    if out.returncode != 0:
        error(f"kubectl kustomize failed: {out.stderr.strip()}")
        return
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    schema_check("kubectl kustomize", rendered)


def compose() -> None:
    cj = Path(sys.executable).parent / "check-jsonschema"
    for f in COMPOSE_FILES:
        label = str(f.relative_to(ROOT))
        out = subprocess.run([str(cj), "--builtin-schema", "vendor.compose-spec", str(f)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            error(f"{label}: not a valid Compose file:\n{out.stdout}{out.stderr}")
        else:
            print(f"ok    {label} (Compose specification schema)")
    scale = yaml.safe_load(COMPOSE_FILES[1].read_text())
    gw = scale["services"].get("gateway") or {}
    if "ports" in gw or "container_name" in gw:
        error("docker-compose.scale.yml: the gateway must publish no host port and have no "
              "container_name, or `--scale gateway=N` cannot start N of them")
    conf = scale["services"].get("lb", {}).get("volumes", [])
    for v in conf:
        src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
        if src.startswith(".") and not (COMPOSE_FILES[1].parent / src).exists():
            error(f"docker-compose.scale.yml: lb mounts {src}, which does not exist")


def main() -> int:
    manifests = sorted(p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    all_docs: list[dict] = []
    for path in manifests:
        docs = load_docs(path)
        if not docs:
            error(f"{path.relative_to(ROOT)}: no Kubernetes object")
        schema_check(str(path.relative_to(ROOT)), docs)
        all_docs.extend(docs)
    if not errors:
        consistency(all_docs)
        kustomization(manifests)
    compose()
    if errors:
        print(f"\n{len(errors)} problem(s) in deploy/")
        return 1
    print(f"\nall manifests valid ({len(all_docs)} objects; Kubernetes {', '.join(K8S_VERSIONS)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
