#!/usr/bin/env python3
"""Checks the deployment files against each other and against the server's config.

    scripts/check-deploy.py [--root DIR]

Parses docker-compose.yml, deploy/compose/single-node.yml, deploy/nginx/nginx.conf,
every deploy/k8s/*.yaml, config/production.toml and .env.example, and asserts what the
cluster deployment relies on (docs/cluster.md, "Deployment"): two app nodes behind
nginx on redis:7 and a mongo:7 replica set; a Deployment of 3 with probes on /health,
a preStop, resources and a grace period above the drain; HPA, PDB, Service, ConfigMap;
and that every environment variable the files set is one the server reads, as derived
from src/config.rs (SWITCHBOARD_<FIELD> and the replaced system's names).

Needs Python 3.11+ (tomllib) and PyYAML (Debian: python3-yaml). Installs nothing,
reaches no network. Exits 0 when every check passes, 1 on any failure (each printed
with FAIL), 2 when it cannot run.
"""

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit, parse_qs

try:
    import tomllib
except ImportError:  # Python < 3.11
    sys.exit("check-deploy: needs Python 3.11+ (tomllib)")
try:
    import yaml
except ImportError:
    sys.exit(
        "check-deploy: needs PyYAML: apt-get install python3-yaml "
        "(or python3 -m pip install pyyaml)"
    )

# drain_sessions() in src/server.rs waits this long for the sessions at most; read
# from there when it can be found.
DEFAULT_SESSION_DRAIN_SECS = 10


class Checks:
    def __init__(self):
        self.passed = 0
        self.failures = []

    def check(self, cond, what, detail=""):
        if cond:
            self.passed += 1
        else:
            self.failures.append(f"{what}" + (f": {detail}" if detail else ""))
        return bool(cond)


class Stop(Exception):
    """A file the rest depends on is missing or unreadable."""


# --------------------------------------------------------------------------- server


def server_facts(root):
    """Accepted environment names and defaults, from src/config.rs."""
    path = root / "src" / "config.rs"
    try:
        src = path.read_text()
    except OSError as e:
        raise Stop(f"cannot read {path}: {e}")
    m = re.search(r"pub struct Config\s*\{(.*?)\n\}", src, re.S)
    if not m:
        raise Stop("src/config.rs: `pub struct Config { … }` not found")
    fields = re.findall(r"^\s*pub\s+(\w+)\s*:", m.group(1), re.M)
    if len(fields) < 20:
        raise Stop(f"src/config.rs: only {len(fields)} Config fields found; the parser needs a look")
    names = {f"SWITCHBOARD_{f.upper()}" for f in fields}
    legacy = re.search(r"const\s+LEGACY_ENV\s*:[^=]*=\s*&\[(.*?)\];", src, re.S)
    if not legacy:
        raise Stop("src/config.rs: LEGACY_ENV not found")
    aliases = set(re.findall(r'"([A-Z0-9_]+)"', legacy.group(1)))
    names |= aliases
    # Read directly (SWITCHBOARD_PROFILE, SWITCHBOARD_CONFIG_DIR).
    names |= set(re.findall(r'env::var\(\s*"([A-Z0-9_]+)"\s*\)', src))
    logging = root / "src" / "logging.rs"
    if logging.exists() and "from_default_env" in logging.read_text():
        names.add("RUST_LOG")  # tracing's EnvFilter
    defaults = {}
    d = re.search(r"impl Default for Config\s*\{(.*?)\n\}", src, re.S)
    if d:
        for key, val in re.findall(r"^\s*(\w+)\s*:\s*([0-9_]+)\s*,", d.group(1), re.M):
            defaults[key] = int(val.replace("_", ""))
    drain = DEFAULT_SESSION_DRAIN_SECS
    server = root / "src" / "server.rs"
    if server.exists():
        fm = re.search(r"async fn drain_sessions.*?\n\}", server.read_text(), re.S)
        if fm:
            secs = re.findall(r"from_secs\((\d+)\)", fm.group(0))
            if secs:
                drain = max(int(s) for s in secs)
    return {"fields": set(fields), "names": names, "aliases": aliases,
            "defaults": defaults, "session_drain": drain}


def production_toml(root, ck, facts):
    path = root / "config" / "production.toml"
    try:
        prod = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        ck.check(False, "config/production.toml parses", str(e))
        return {}
    unknown = sorted(set(prod) - facts["fields"])
    ck.check(not unknown, "config/production.toml: every key is a Config field", ", ".join(unknown))
    for key in ("cluster_heartbeat_ms", "cluster_lease_ms", "cluster_skew_ms",
                "cluster_call_timeout_ms", "send_timeout_ms", "shutdown_timeout_secs"):
        if key in facts["fields"]:
            ck.check(key in prod, f"config/production.toml sets {key}")
    for key in ("mongodb_write_concern", "mongodb_read_concern"):
        if key in facts["fields"]:
            ck.check(prod.get(key) == "majority", f"config/production.toml: {key} = \"majority\"",
                     repr(prod.get(key)))
    secret_keys = {"admin_token", "jwt_secret", "mongodb_uri", "redis_url", "redis_password"}
    leaked = sorted(secret_keys & set(prod))
    ck.check(not leaked, "config/production.toml holds no secrets", ", ".join(leaked))
    if "cluster_lease_ms" in prod and "cluster_heartbeat_ms" in prod:
        hb, lease = prod["cluster_heartbeat_ms"], prod["cluster_lease_ms"]
        skew = prod.get("cluster_skew_ms", facts["defaults"].get("cluster_skew_ms", 0))
        ck.check(lease >= 2 * hb + 2 * skew, "production cluster lease ≥ 2 heartbeats + 2 skews",
                 f"lease {lease}, heartbeat {hb}, skew {skew}")
    return prod


def shutdown_timeout(env, prod, facts):
    """The effective shutdown_timeout_secs: environment > production profile > default."""
    v = env.get("SWITCHBOARD_SHUTDOWN_TIMEOUT_SECS")
    if v not in (None, ""):
        return int(v)
    if "shutdown_timeout_secs" in prod:
        return int(prod["shutdown_timeout_secs"])
    return facts["defaults"].get("shutdown_timeout_secs", 5)


def check_env_names(ck, where, names, facts, helpers=()):
    bad = sorted(n for n in names if n not in facts["names"] and n not in helpers)
    ck.check(not bad, f"{where}: every environment variable is one the server reads",
             "unknown: " + ", ".join(bad) + " (see src/config.rs)")


# --------------------------------------------------------------------------- files


def load_yaml(path, ck, many=False):
    try:
        text = path.read_text()
    except OSError as e:
        ck.check(False, f"{path.name} readable", str(e))
        return None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        ck.check(False, f"{path} is valid YAML", str(e).replace("\n", " "))
        return None
    ck.check(True, f"{path} is valid YAML")
    if many:
        return docs
    ck.check(len(docs) == 1, f"{path}: one YAML document", f"{len(docs)} found")
    return docs[0] if docs else None


def duration_secs(v):
    """Compose durations: 45s, 1m30s, 500ms, 1h; bare numbers are seconds."""
    if isinstance(v, (int, float)):
        return float(v)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(v))
    if not parts or "".join(a + b for a, b in parts) != str(v).strip():
        return None
    scale = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    return sum(float(a) * scale[b] for a, b in parts)


def compose_env(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        out = {}
        for item in env:
            k, _, v = str(item).partition("=")
            out[k] = v
        return out
    return {str(k): ("" if v is None else str(v)) for k, v in env.items()}


def healthcheck_text(svc):
    test = (svc.get("healthcheck") or {}).get("test")
    if isinstance(test, list):
        return " ".join(str(t) for t in test)
    return str(test or "")


def depends(svc):
    d = svc.get("depends_on") or {}
    if isinstance(d, list):
        return {name: "service_started" for name in d}
    return {k: (v or {}).get("condition", "service_started") for k, v in d.items()}


def build_context(base, svc):
    b = svc.get("build")
    if b is None:
        return None
    ctx = b if isinstance(b, str) else b.get("context", ".")
    dockerfile = "Dockerfile" if isinstance(b, str) else b.get("dockerfile", "Dockerfile")
    return (base / ctx).resolve() / dockerfile


def check_compose(root, ck, facts, prod):
    path = root / "docker-compose.yml"
    doc = load_yaml(path, ck)
    if not isinstance(doc, dict):
        return
    services = doc.get("services") or {}
    apps = sorted(n for n, s in services.items() if s.get("build") is not None)
    ck.check(apps == ["node1", "node2"], "docker-compose.yml: app nodes node1 and node2 built from the Dockerfile",
             f"built services: {apps}")

    redis = [n for n, s in services.items() if str(s.get("image", "")).split("@")[0] == "redis:7"]
    mongo = [n for n, s in services.items() if str(s.get("image", "")).split("@")[0] == "mongo:7"]
    proxies = [n for n, s in services.items() if str(s.get("image", "")).split(":")[0] in ("nginx", "library/nginx")]
    ck.check(len(redis) == 1, "docker-compose.yml: one redis:7 service", f"{redis}")
    ck.check(len(mongo) == 1, "docker-compose.yml: one mongo:7 service", f"{mongo}")
    ck.check(len(proxies) == 1, "docker-compose.yml: one nginx proxy (official image)", f"{proxies}")

    if mongo:
        m = services[mongo[0]]
        cmd = m.get("command") or []
        cmd = cmd if isinstance(cmd, list) else str(cmd).split()
        cmd = [str(c) for c in cmd]
        rs = None
        for i, c in enumerate(cmd):
            if c == "--replSet" and i + 1 < len(cmd):
                rs = cmd[i + 1]
            elif c.startswith("--replSet="):
                rs = c.split("=", 1)[1]
        ck.check(rs == "rs0", "mongo runs with --replSet rs0", f"command: {cmd}")
        hc = healthcheck_text(m)
        ck.check("rs.initiate" in hc and "rs0" in hc,
                 "mongo healthcheck initiates the replica set (rs.initiate)", hc[:120])
        ck.check(("rs.status" in hc or "hello" in hc or "isMaster" in hc) and "catch" in hc,
                 "mongo rs.initiate is idempotent (guarded by rs.status / try-catch)")
        host = re.search(r"host:\s*['\"]([^'\"]+)['\"]", hc)
        ck.check(host is not None and host.group(1).split(":")[0] in services,
                 "replica set member host is the compose service name the nodes reach",
                 host.group(1) if host else "no member host found")

    if redis:
        ck.check("redis-cli" in healthcheck_text(services[redis[0]]), "redis has a healthcheck (redis-cli ping)")

    advertised = {}
    for name in apps:
        svc = services[name]
        where = f"docker-compose.yml {name}"
        df = build_context(path.parent, svc)
        ck.check(df is not None and df.exists(), f"{where}: builds from an existing Dockerfile", str(df))
        env = compose_env(svc)
        check_env_names(ck, where, env, facts)
        adv = env.get("SWITCHBOARD_ADVERTISE_URL", "")
        advertised[name] = adv
        host = svc.get("hostname", name)
        ck.check(urlsplit(adv).hostname in (name, host),
                 f"{where}: SWITCHBOARD_ADVERTISE_URL names the node", adv or "unset")
        uri = env.get("MONGODB_URI", "")
        q = parse_qs(urlsplit(uri).query)
        ck.check(q.get("replicaSet") == ["rs0"], f"{where}: MONGODB_URI has replicaSet=rs0", uri or "unset")
        ck.check(bool(mongo) and urlsplit(uri).hostname == mongo[0], f"{where}: MONGODB_URI points at the mongo service", uri)
        r = env.get("REDIS_URL", "")
        ck.check(r.startswith("redis://") and bool(redis) and urlsplit(r).hostname == redis[0],
                 f"{where}: REDIS_URL points at the redis service", r or "unset")
        ck.check("${ADMIN_TOKEN" in env.get("ADMIN_TOKEN", ""), f"{where}: ADMIN_TOKEN comes from .env (${{ADMIN_TOKEN…}})",
                 env.get("ADMIN_TOKEN", "unset"))
        ck.check(env.get("SWITCHBOARD_PROFILE") == "production", f"{where}: production profile")
        bind = env.get("SWITCHBOARD_BIND", "")
        ck.check(bind.startswith("0.0.0.0:"), f"{where}: binds 0.0.0.0", bind)
        deps = depends(svc)
        for dep in redis + mongo:
            ck.check(deps.get(dep) == "service_healthy", f"{where}: depends on healthy {dep}", str(deps))
        ck.check("/health" in healthcheck_text(svc), f"{where}: healthcheck on /health")
        grace = duration_secs(svc.get("stop_grace_period", "10s"))
        timeout = shutdown_timeout(env, prod, facts)
        need = timeout + facts["session_drain"]
        ck.check(grace is not None and grace > need,
                 f"{where}: stop_grace_period above shutdown_timeout_secs + session drain",
                 f"{svc.get('stop_grace_period', '10s (default)')} ≤ {timeout} + {facts['session_drain']} s")
        ck.check(not svc.get("ports"), f"{where}: reached through the proxy only (no published port)")
    ck.check(len(set(advertised.values())) == len(advertised), "docker-compose.yml: each node advertises its own URL",
             str(advertised))

    if proxies:
        p = services[proxies[0]]
        vols = [str(v) if not isinstance(v, dict) else f"{v.get('source')}:{v.get('target')}" for v in p.get("volumes") or []]
        mount = [v for v in vols if "deploy/nginx/nginx.conf" in v and "/etc/nginx/" in v]
        ck.check(bool(mount), "proxy mounts deploy/nginx/nginx.conf", str(vols))
        ck.check(bool(p.get("ports")), "proxy publishes a port")
        ck.check(set(apps) <= set(depends(p)), "proxy depends on both nodes", str(depends(p)))
        check_nginx(root, ck, apps, env_port(services, apps))


def env_port(services, apps):
    for name in apps:
        bind = compose_env(services[name]).get("SWITCHBOARD_BIND", "")
        if ":" in bind:
            return bind.rsplit(":", 1)[1]
    return "3000"


def check_nginx(root, ck, apps, port):
    path = root / "deploy" / "nginx" / "nginx.conf"
    try:
        conf = path.read_text()
    except OSError as e:
        ck.check(False, "deploy/nginx/nginx.conf readable", str(e))
        return
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    ck.check(code.count("{") == code.count("}"), "nginx.conf: braces balance")
    up = re.search(r"upstream\s+(\w+)\s*\{(.*?)\}", code, re.S)
    if not ck.check(up is not None, "nginx.conf: an upstream block"):
        return
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)([^;]*);", up.group(2), re.M)
    ck.check(sorted(s[0] for s in servers) == sorted(apps), "nginx.conf: upstream has both nodes",
             str(servers))
    ck.check(all(s[1] == port for s in servers), f"nginx.conf: upstream port is the nodes' ({port})")
    ck.check(all("max_fails=" in s[2] for s in servers), "nginx.conf: passive health (max_fails) on every server")
    ck.check(not re.search(r"\b(ip_hash|hash|random)\b", up.group(2)) or "least_conn" in up.group(2),
             "nginx.conf: least_conn or round robin")
    ck.check(re.search(r"proxy_pass\s+http://" + up.group(1) + r"\s*;", code) is not None,
             "nginx.conf: proxy_pass to the upstream")
    ck.check(re.search(r"proxy_http_version\s+1\.1\s*;", code) is not None, "nginx.conf: proxy_http_version 1.1")
    ck.check(re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade\s*;", code) is not None,
             "nginx.conf: passes the Upgrade header")
    ck.check(re.search(r"proxy_set_header\s+Connection\s+(\$connection_upgrade|\"?upgrade\"?)\s*;", code) is not None,
             "nginx.conf: passes Connection: upgrade")
    # The timeout that holds for WebSockets: the one in `location = /v1/ws` (or a
    # prefix of it), else the server's, else nginx's default of 60 s.
    ws = re.search(r"location\s+(?:=\s*)?/v1/ws\s*\{([^{}]*)\}", code)
    scope = ws.group(1) if ws and "proxy_read_timeout" in ws.group(1) else re.sub(
        r"location[^{]*\{[^{}]*\}", "", code)
    rt = re.search(r"proxy_read_timeout\s+(\d+)(s|m|h)?\s*;", scope)
    secs = int(rt.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[rt.group(2)] if rt else 60
    ck.check(secs >= 300, "nginx.conf: proxy_read_timeout for /v1/ws long enough for idle sockets (≥ 300 s)",
             f"{secs} s")
    ck.check(ws is not None and "proxy_pass" in ws.group(1) if ws else True,
             "nginx.conf: the /v1/ws location proxies to the nodes")
    for fmt in re.findall(r"log_format\s+\w+\s+((?:'[^']*'\s*)+);", code, re.S):
        ck.check(not re.search(r"\$(request|request_uri|args|query_string|arg_\w+)\b", fmt),
                 "nginx.conf: access log never records query strings (tokens)", fmt.strip()[:80])
    # nginx's error log writes the request line with its query: the token routes must
    # keep it to crit (upstream errors are [error], passive-health notes [warn]).
    for route in ("/v1/ws", "/admin/events"):
        loc = re.search(r"location\s+(?:=\s*)?" + re.escape(route) + r"\s*\{([^{}]*)\}", code)
        level = re.search(r"error_log\s+\S+\s+(\w+)\s*;", loc.group(1)) if loc else None
        glob = re.search(r"^\s*error_log\s+\S+\s+(\w+)\s*;", re.sub(r"location[^{]*\{[^{}]*\}", "", code), re.M)
        lvl = (level or glob).group(1) if (level or glob) else "error"
        ck.check(lvl in ("crit", "alert", "emerg"),
                 f"nginx.conf: {route} keeps its tokens out of the error log (error_log … crit)", lvl)
    ck.check(re.search(r"access_log\s+(?!off)\S+\s+\w+", code) is not None or "access_log off" in code,
             "nginx.conf: access log uses a format of its own (not the default, which logs $request)")


def check_single_node(root, ck, facts):
    path = root / "deploy" / "compose" / "single-node.yml"
    if not ck.check(path.exists(), "deploy/compose/single-node.yml exists"):
        return
    text = path.read_text()
    ck.check("docker compose -f deploy/compose/single-node.yml" in text,
             "single-node.yml says how to run it")
    doc = load_yaml(path, ck)
    if not isinstance(doc, dict):
        return
    services = doc.get("services") or {}
    ck.check(len(services) == 1, "single-node.yml: one service", str(list(services)))
    for name, svc in services.items():
        df = build_context(path.parent, svc)
        ck.check(df is not None and df.exists(), "single-node.yml: builds the repository's Dockerfile", str(df))
        env = compose_env(svc)
        check_env_names(ck, "single-node.yml", env, facts)
        ck.check("MONGODB_URI" not in env and "REDIS_URL" not in env, "single-node.yml: the embedded store")
        ck.check(any("/data" in str(v) for v in svc.get("volumes") or []), "single-node.yml: data in a volume")


def check_env_example(root, ck, facts):
    path = root / ".env.example"
    if not path.exists():
        return
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", path.read_text(), re.M))
    check_env_names(ck, ".env.example", names, facts)


# --------------------------------------------------------------------------- k8s


def check_k8s(root, ck, facts, prod):
    kdir = root / "deploy" / "k8s"
    files = sorted(kdir.glob("*.yaml")) + sorted(kdir.glob("*.yml"))
    if not ck.check(bool(files), "deploy/k8s has manifests"):
        return
    ck.check(not (kdir / "switchboard.yaml").exists(), "deploy/k8s/switchboard.yaml replaced by the kustomization")
    docs = {}
    for f in files:
        loaded = load_yaml(f, ck, many=True)
        if loaded is not None:
            docs[f.name] = loaded
    for fname, ds in docs.items():
        for d in ds:
            ok = isinstance(d, dict) and d.get("apiVersion") and d.get("kind")
            ck.check(ok, f"deploy/k8s/{fname}: apiVersion and kind")
            if ok and d["kind"] != "Kustomization":
                ck.check((d.get("metadata") or {}).get("name"), f"deploy/k8s/{fname}: metadata.name")
                ck.check("namespace" not in (d.get("metadata") or {}),
                         f"deploy/k8s/{fname}: namespace-agnostic (no metadata.namespace)")

    def kind(k, fname=None):
        return [(n, d) for n, ds in docs.items() for d in ds
                if isinstance(d, dict) and d.get("kind") == k and (fname is None or n == fname)]

    kust = docs.get("kustomization.yaml", [None])[0]
    if ck.check(isinstance(kust, dict), "deploy/k8s/kustomization.yaml present"):
        res = kust.get("resources") or []
        expected = sorted(n for n in docs if n not in ("kustomization.yaml",) and "example" not in n)
        ck.check(sorted(res) == expected, "kustomization lists every manifest", f"{sorted(res)} vs {expected}")
        ck.check(not any("example" in r for r in res), "kustomization does not apply the example Secret")
        ck.check(all((kdir / r).exists() for r in res), "kustomization resources exist")
        ck.check("namespace" not in kust, "kustomization is namespace-agnostic")

    cms = kind("ConfigMap", "configmap.yaml")
    secrets = kind("Secret", "secret.example.yaml")
    deps = kind("Deployment", "deployment.yaml")
    svcs = kind("Service", "service.yaml")
    hpas = kind("HorizontalPodAutoscaler", "hpa.yaml")
    pdbs = kind("PodDisruptionBudget", "pdb.yaml")
    for what, found in (("ConfigMap in configmap.yaml", cms), ("Secret in secret.example.yaml", secrets),
                        ("Deployment in deployment.yaml", deps), ("Service in service.yaml", svcs),
                        ("HorizontalPodAutoscaler in hpa.yaml", hpas), ("PodDisruptionBudget in pdb.yaml", pdbs)):
        ck.check(len(found) == 1, f"deploy/k8s: one {what}", f"{len(found)} found")
    ck.check(not kind("Secret", None) or all(n == "secret.example.yaml" for n, _ in kind("Secret")),
             "deploy/k8s: no Secret outside secret.example.yaml")

    cm = cms[0][1] if cms else {}
    cm_data = {str(k): str(v) for k, v in (cm.get("data") or {}).items()}
    check_env_names(ck, "configmap.yaml", cm_data, facts)
    ck.check(cm_data.get("SWITCHBOARD_PROFILE") == "production", "configmap: production profile")
    ck.check(cm_data.get("SWITCHBOARD_BIND") == "0.0.0.0:3000", "configmap: bind 0.0.0.0:3000",
             cm_data.get("SWITCHBOARD_BIND", "unset"))
    ck.check("json" in (cm_data.get("LOG_FORMAT"), cm_data.get("SWITCHBOARD_LOG_FORMAT")), "configmap: JSON logs")
    for key in ("SWITCHBOARD_CLUSTER_HEARTBEAT_MS", "SWITCHBOARD_CLUSTER_LEASE_MS", "SWITCHBOARD_CLUSTER_SKEW_MS"):
        ck.check(key in cm_data, f"configmap: cluster timing {key}")
    # The ConfigMap repeats production.toml's values; it may override them, but a
    # silent drift between the two would be a trap.
    for key, val in cm_data.items():
        field = key.removeprefix("SWITCHBOARD_").lower()
        timing = field.startswith("cluster_") or field in ("send_timeout_ms", "shutdown_timeout_secs")
        if key.startswith("SWITCHBOARD_") and timing and field in prod:
            ck.check(str(prod[field]).lower() == val.lower(),
                     f"configmap {key} equals config/production.toml {field}", f"{val} vs {prod[field]}")
    secretish = {"MONGODB_URI", "REDIS_URL", "REDIS_PASSWORD", "ADMIN_TOKEN", "JWT_SECRET"}
    ck.check(not (secretish & set(cm_data)), "configmap holds no secrets", str(sorted(secretish & set(cm_data))))

    sec = secrets[0][1] if secrets else {}
    sec_data = {str(k): str(v) for k, v in ((sec.get("stringData") or {}) | (sec.get("data") or {})).items()}
    check_env_names(ck, "secret.example.yaml", sec_data, facts)
    for key in ("MONGODB_URI", "REDIS_URL", "ADMIN_TOKEN"):
        ck.check(key in sec_data, f"secret.example.yaml: {key}")
    ck.check(all("EXAMPLE" in v.upper() for v in sec_data.values()), "secret.example.yaml: every value is a marked placeholder")
    ck.check("EXAMPLE" in (kdir / "secret.example.yaml").read_text().split("\n", 1)[0].upper()
             if (kdir / "secret.example.yaml").exists() else False,
             "secret.example.yaml: marked as an example on its first line")
    mq = parse_qs(urlsplit(sec_data.get("MONGODB_URI", "")).query)
    ck.check(mq.get("replicaSet") == ["rs0"], "secret.example.yaml: MONGODB_URI names the replica set")

    if not deps:
        return
    dep = deps[0][1]
    spec = dep.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    pod_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    ck.check(spec.get("replicas") == 3, "deployment: replicas 3", str(spec.get("replicas")))
    ru = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    ck.check((spec.get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"
             and ru.get("maxUnavailable") == 0 and ru.get("maxSurge") == 1,
             "deployment: rolling update maxUnavailable 0 / maxSurge 1", str(ru))
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    ck.check(sel and all(pod_labels.get(k) == v for k, v in sel.items()), "deployment: selector matches the pod labels")
    containers = pod.get("containers") or []
    if not ck.check(len(containers) >= 1, "deployment: a container"):
        return
    c = containers[0]

    env_list = c.get("env") or []
    env = {e.get("name"): e for e in env_list}
    # Names only defined to be expanded as $(NAME) in another value (the downward API).
    refs = set(re.findall(r"\$\((\w+)\)", " ".join(str(e.get("value", "")) for e in env_list)))
    helpers = {n for n in refs if n in env and "valueFrom" in env[n]}
    check_env_names(ck, "deployment.yaml", env, facts, helpers)
    adv = str((env.get("SWITCHBOARD_ADVERTISE_URL") or {}).get("value", ""))
    pod_ip = ((env.get("POD_IP") or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
    ck.check("advertise_url" in facts["fields"] and re.fullmatch(r"http://\$\(POD_IP\):\d+", adv) is not None,
             "deployment: SWITCHBOARD_ADVERTISE_URL from the pod IP", adv or "unset")
    ck.check(pod_ip == "status.podIP", "deployment: POD_IP from the downward API (status.podIP)")
    names = list(env)
    ck.check("POD_IP" not in names or "SWITCHBOARD_ADVERTISE_URL" not in names
             or names.index("POD_IP") < names.index("SWITCHBOARD_ADVERTISE_URL"),
             "deployment: POD_IP defined before it is expanded")
    env_from = c.get("envFrom") or []
    cm_refs = [(e.get("configMapRef") or {}).get("name") for e in env_from if "configMapRef" in e]
    sec_refs = [(e.get("secretRef") or {}).get("name") for e in env_from if "secretRef" in e]
    ck.check(cm and (cm.get("metadata") or {}).get("name") in cm_refs, "deployment: envFrom the ConfigMap", str(cm_refs))
    ck.check(sec and (sec.get("metadata") or {}).get("name") in sec_refs, "deployment: envFrom the Secret", str(sec_refs))

    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    bind_port = int(cm_data.get("SWITCHBOARD_BIND", "0.0.0.0:3000").rsplit(":", 1)[1])
    ck.check(bind_port in ports.values(), f"deployment: containerPort is the bind port ({bind_port})", str(ports))

    def probe_path(p):
        p = p or {}
        if "httpGet" in p:
            return p["httpGet"].get("path")
        if "exec" in p:
            return "/health" if "/health" in " ".join(p["exec"].get("command") or []) else None
        return None

    def probe_port_ok(p):
        port = ((p or {}).get("httpGet") or {}).get("port")
        return port is None or port == bind_port or ports.get(port) == bind_port

    rp, lp, sp = c.get("readinessProbe"), c.get("livenessProbe"), c.get("startupProbe")
    ck.check(probe_path(rp) == "/health", "deployment: readinessProbe on /health")
    ck.check(probe_path(lp) == "/health" or (lp or {}).get("tcpSocket") is not None,
             "deployment: livenessProbe on /health (or TCP)")
    ck.check(probe_port_ok(rp) and probe_port_ok(lp), "deployment: probes on the server's port")

    def window(p, default_period=10, default_failures=3):
        p = p or {}
        return p.get("periodSeconds", default_period) * p.get("failureThreshold", default_failures)

    if lp and "httpGet" in lp:
        ck.check(window(lp) >= 120, "deployment: liveness tolerates a store outage (≥ 120 s of 503 before a restart)",
                 f"{window(lp)} s")
        ck.check(window(lp) > window(rp), "deployment: liveness more patient than readiness")
        ck.check("# Live" in (kdir / "deployment.yaml").read_text() or "liveness" in (kdir / "deployment.yaml").read_text().lower(),
                 "deployment.yaml explains the liveness thresholds in a comment")
    if sp:
        ck.check(probe_path(sp) == "/health", "deployment: startupProbe on /health")

    pre = ((c.get("lifecycle") or {}).get("preStop") or {})
    ck.check(bool(pre), "deployment: preStop present")
    pre_secs = 0
    if "sleep" in pre:
        pre_secs = int((pre.get("sleep") or {}).get("seconds", 0))
    elif "exec" in pre:
        cmd = " ".join(str(x) for x in (pre["exec"].get("command") or []))
        m = re.search(r"\bsleep\s+(\d+)", cmd)
        pre_secs = int(m.group(1)) if m else 0
    ck.check(pre_secs > 0, "deployment: preStop waits before SIGTERM (sleep)", str(pre))

    res = c.get("resources") or {}
    for side in ("requests", "limits"):
        for r in ("cpu", "memory"):
            ck.check(r in (res.get(side) or {}), f"deployment: resources.{side}.{r}")

    all_env = {**cm_data, **{k: str(v.get("value", "")) for k, v in env.items() if "value" in v}}
    timeout = shutdown_timeout(all_env, prod, facts)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    ck.check(grace > timeout, "deployment: terminationGracePeriodSeconds > shutdown timeout",
             f"{grace} ≤ {timeout}")
    need = pre_secs + timeout + facts["session_drain"]
    ck.check(grace > need, "deployment: terminationGracePeriodSeconds > preStop + shutdown timeout + session drain",
             f"{grace} ≤ {pre_secs} + {timeout} + {facts['session_drain']}")

    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    ck.check(psc.get("runAsNonRoot") is True or csc.get("runAsNonRoot") is True, "deployment: runAsNonRoot")
    uid = psc.get("runAsUser", csc.get("runAsUser"))
    dockerfile = (root / "Dockerfile").read_text() if (root / "Dockerfile").exists() else ""
    m = re.search(r"useradd[^\n]*--uid\s+(\d+)", dockerfile)
    if m:
        ck.check(uid == int(m.group(1)), "deployment: runAsUser is the image's user", f"{uid} vs {m.group(1)}")
    ck.check(csc.get("allowPrivilegeEscalation") is False, "deployment: allowPrivilegeEscalation false")
    if csc.get("readOnlyRootFilesystem"):
        mounts = {v.get("mountPath") for v in c.get("volumeMounts") or []}
        data_dir = all_env.get("SWITCHBOARD_DATA_DIR") or "/data"
        ck.check(data_dir in mounts, "deployment: read-only root FS, the data dir is a mounted volume",
                 f"{data_dir} not in {sorted(mounts)}")
    ck.check(csc.get("readOnlyRootFilesystem") is True, "deployment: read-only root filesystem")

    if svcs:
        s = svcs[0][1].get("spec") or {}
        ck.check(s.get("type", "ClusterIP") == "ClusterIP", "service: ClusterIP")
        ssel = s.get("selector") or {}
        ck.check(ssel and all(pod_labels.get(k) == v for k, v in ssel.items()), "service: selects the pods")
        tps = [p.get("targetPort") for p in s.get("ports") or []]
        ck.check(tps and all(tp in ports or tp == bind_port for tp in tps), "service: targetPort is the container port", str(tps))
        ck.check("affinity" in (kdir / "service.yaml").read_text().lower(),
                 "service.yaml comments on session affinity")
        ck.check(s.get("sessionAffinity", "None") == "None", "service: no session affinity")

    if hpas:
        h = hpas[0][1]
        hs = h.get("spec") or {}
        ck.check(h.get("apiVersion") == "autoscaling/v2", "hpa: autoscaling/v2", str(h.get("apiVersion")))
        tgt = hs.get("scaleTargetRef") or {}
        ck.check(tgt.get("kind") == "Deployment" and tgt.get("name") == (dep.get("metadata") or {}).get("name"),
                 "hpa: scales the Deployment", str(tgt))
        ck.check(hs.get("minReplicas") == 3 and hs.get("maxReplicas") == 10, "hpa: min 3, max 10")
        cpu = [m for m in hs.get("metrics") or [] if (m.get("resource") or {}).get("name") == "cpu"]
        ck.check(cpu and (cpu[0]["resource"].get("target") or {}).get("averageUtilization") == 70
                 and (cpu[0]["resource"].get("target") or {}).get("type") == "Utilization",
                 "hpa: CPU utilization 70%")
        ck.check(spec.get("replicas", 1) >= hs.get("minReplicas", 1), "deployment replicas ≥ hpa minReplicas")

    if pdbs:
        p = pdbs[0][1]
        ps = p.get("spec") or {}
        ck.check(p.get("apiVersion") == "policy/v1", "pdb: policy/v1")
        ck.check(ps.get("minAvailable") == 2, "pdb: minAvailable 2", str(ps.get("minAvailable")))
        psel = (ps.get("selector") or {}).get("matchLabels") or {}
        ck.check(psel and all(pod_labels.get(k) == v for k, v in psel.items()), "pdb: selects the pods")
        ck.check(isinstance(ps.get("minAvailable"), int) and ps["minAvailable"] < spec.get("replicas", 1),
                 "pdb: minAvailable below replicas (a drain can proceed)")


def check_docs(root, ck):
    readme = (root / "README.md").read_text() if (root / "README.md").exists() else ""
    cluster = (root / "docs" / "cluster.md").read_text() if (root / "docs" / "cluster.md").exists() else ""
    ck.check(re.search(r"^#+\s*Running several nodes", readme, re.M), "README.md: a \"Running several nodes\" section")
    ck.check(re.search(r"^#+\s*Deployment", cluster, re.M), "docs/cluster.md: a \"Deployment\" section")
    stale = []
    for f in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if f.exists() and "deploy/k8s/switchboard.yaml" in f.read_text():
            stale.append(str(f.relative_to(root)))
    ck.check(not stale, "no document names the removed deploy/k8s/switchboard.yaml", ", ".join(stale))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent,
                    help="repository root (default: this script's parent directory)")
    args = ap.parse_args()
    root = args.root.resolve()
    ck = Checks()
    try:
        facts = server_facts(root)
    except Stop as e:
        print(f"check-deploy: cannot run: {e}", file=sys.stderr)
        return 2
    prod = production_toml(root, ck, facts)
    check_compose(root, ck, facts, prod)
    check_single_node(root, ck, facts)
    check_env_example(root, ck, facts)
    check_k8s(root, ck, facts, prod)
    check_docs(root, ck)
    for f in ck.failures:
        print(f"FAIL: {f}", file=sys.stderr)
    print(f"check-deploy: {ck.passed} passed, {len(ck.failures)} failed")
    return 1 if ck.failures else 0


if __name__ == "__main__":
    sys.exit(main())
