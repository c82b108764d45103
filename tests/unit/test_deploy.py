"""The production shape, checked by real validators (no Docker engine or cluster runs here): the image
by hadolint, docker-compose.yml by the Compose specification's schema, deploy/k8s by the Kubernetes
schemas; setting names the same everywhere as in the code; production-mode refusals in one line."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy.production import PARTS, topic_names
from shared.settings import setting_names

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
# Read by uvicorn, not by our settings classes (README: FORWARDED_ALLOW_IPS), or by the launcher only.
NOT_SETTINGS = {"FORWARDED_ALLOW_IPS", "VMC_BROKER_PORT"}
# Set by Kubernetes' downward API only to be expanded into another variable (analytics.yaml).
DOWNWARD_API = {"POD_NAME"}
# The compose services running analytics: one each, so each has a consumer group of its own.
ANALYTICS_REPLICAS = ("analytics-1", "analytics-2")


def code_settings() -> set[str]:
    """Every variable the pydantic-settings classes of the parts read."""
    return set().union(*(setting_names(part.settings_class()) for part in PARTS.values()))


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # merge keys (<<) resolved


def k8s_documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def readme_settings() -> set[str]:
    """The variables of README's configuration table, `<SERVICE>` expanded as the table says."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Configuration"):]
    table = table[:table.index("\n## ", 1)]
    names = set()
    for row in re.finditer(r"^\| `([A-Z0-9_<>]+)`(, also `GATEWAY`)? \|", table, re.M):
        name, gateway = row.group(1), row.group(2)
        if "<SERVICE>" in name:
            parts = ["REGISTRY", "ACTIVITIES", "ANALYTICS"] + (["GATEWAY"] if gateway else [])
            names |= {name.replace("<SERVICE>", part) for part in parts}
        else:
            names.add(name)
    return names


# ---- the image -----------------------------------------------------------------------------------

def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--failure-threshold", "info", str(ROOT / "deploy" / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_non_root_with_a_health_check_and_picks_its_part_by_command():
    lines = [line.strip() for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines()]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and stages[1] == "FROM ${PYTHON_IMAGE}"  # built in one stage, run from a clean one
    final = lines[lines.index(stages[1]):]
    user = next(line for line in final if line.startswith("USER "))
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert any(line.startswith("HEALTHCHECK") for line in final)
    assert not any(line.startswith(("RUN pip", "RUN apt")) for line in final)  # nothing built in the final layer
    assert final[-2:] == ['ENTRYPOINT ["vmc"]', 'CMD ["serve", "gateway"]']
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!shared/" in ignored and ".env" not in ignored  # everything out, then the sources


# ---- docker-compose.yml ----------------------------------------------------------------------------

def test_compose_file_is_valid_against_the_compose_specification():
    schema = json.loads((ROOT / "tests" / "vendor" / "compose-spec" / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_compose_topology():
    services = compose()["services"]
    assert set(services) == {"kafka", "postgres", "redis", "setup", "registry", "activities", *ANALYTICS_REPLICAS,
                             "gateway", "nginx"}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:") and kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert not any("zookeeper" in name.lower() or "ZOOKEEPER" in str(s) for name, s in services.items())
    # Nothing is published but nginx's TLS port.
    assert {name: s["ports"] for name, s in services.items() if "ports" in s} == {"nginx": ["443:8443"]}
    assert services["activities"]["deploy"]["replicas"] == 2
    for name, service in services.items():
        if name == "setup":
            assert service["healthcheck"] == {"disable": True} and service["restart"] == "no"
            assert "vmc topics" in service["entrypoint"][-1] and "vmc migrate" in service["entrypoint"][-1]
            continue
        assert service["healthcheck"]["test"], name
        if name not in ("kafka", "postgres", "redis"):
            assert service["depends_on"], name
            assert all("condition" in c for c in service["depends_on"].values()), name
    for name, part in [("registry", "registry"), ("activities", "activities"), ("gateway", "gateway"),
                       *((replica, "analytics") for replica in ANALYTICS_REPLICAS)]:
        assert services[name]["depends_on"]["setup"] == {"condition": "service_completed_successfully"}
        assert services[name]["command"] == ["serve", part]
    assert all(services["gateway"]["depends_on"][replica] == {"condition": "service_healthy"} for replica in ANALYTICS_REPLICAS)


def test_compose_analytics_replicas_each_consume_every_partition_into_a_store_of_their_own():
    """Replicas sharing a consumer group would split the partitions, each store holding part of the events."""
    services = compose()["services"]
    replicas = [services[name] for name in ANALYTICS_REPLICAS]
    assert not any("deploy" in r for r in replicas)  # `deploy.replicas` would run copies under one group
    groups = [r["environment"]["VMC_ANALYTICS_CONSUMER_GROUP"] for r in replicas]
    assert len(set(groups)) == len(replicas), groups
    stores = [r["volumes"] for r in replicas]
    assert all(len(v) == 1 and v[0].endswith(":/var/lib/vmc") for v in stores)
    assert len({v[0] for v in stores}) == len(replicas), stores
    # Both answer at the one name the gateway calls.
    assert all(r["networks"]["default"]["aliases"] == ["analytics"] for r in replicas)
    assert services["gateway"]["environment"]["VMC_ANALYTICS_URL"] == "http://analytics:8000"


def test_compose_secrets_come_from_the_committed_env_example():
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = {line.split("=", 1)[0] for line in (ROOT / ".env.example").read_text().splitlines()
               if line and not line.startswith("#")}
    assert used == example
    for line in (ROOT / ".env.example").read_text().splitlines():
        if re.match(r"[A-Z_]*(SECRET|PASSWORD|KEY|CLUSTER_ID)=", line):
            assert line.endswith("="), f"{line}: an example holds no secret"
    assert ".env" in (ROOT / ".gitignore").read_text().splitlines()


def test_nginx_limits_slow_and_silent_clients():
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    for directive in ("client_header_timeout", "client_body_timeout", "send_timeout", "keepalive_timeout",
                      "limit_conn per_client", "ssl_certificate "):
        assert re.search(rf"^\s*{directive}", conf, re.M), directive
    assert re.search(r"^\s*client_max_body_size 50m;", conf, re.M)
    assert re.search(r"^\s*listen 8443 ssl;", conf, re.M)


# ---- Kubernetes ----------------------------------------------------------------------------------

def test_k8s_manifests_are_valid_against_the_kubernetes_schemas():
    documents = k8s_documents()
    assert len(documents) > 10
    for name, doc in documents:
        try:
            kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}")
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_k8s_parts_have_probes_resources_budgets_and_referenced_secrets():
    documents = k8s_documents()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents}
    assert not any(kind == "Secret" for kind, _ in kinds)  # secrets are created by the operator, never committed
    workloads = {doc["metadata"]["name"]: doc for _, doc in documents if doc["kind"] in ("Deployment", "StatefulSet")}
    assert set(workloads) == {"registry", "activities", "analytics", "gateway"}
    for name, doc in workloads.items():
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["serve", name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert set(container["resources"]) == {"requests", "limits"}
        assert ("PodDisruptionBudget", name) in kinds
        assert (("HorizontalPodAutoscaler", name) in kinds) == (name != "analytics")  # see analytics.yaml
    for _, doc in documents:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for env in container.get("env", []):
                    secret = "SECRET" in env["name"] or env["name"].endswith(("DATABASE_URL", "REDIS_URL", "ADMIN_KEY"))
                    assert ("value" not in env) if secret else True, env["name"]
                    assert secret == ("secretKeyRef" in env.get("valueFrom", {})), env["name"]


def test_k8s_analytics_replicas_each_consume_under_a_group_named_after_their_pod():
    (statefulset,) = [doc for _, doc in k8s_documents()
                      if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "analytics"]
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    env = [e["name"] for e in container["env"]]
    by_name = {e["name"]: e for e in container["env"]}
    assert by_name["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert by_name["VMC_ANALYTICS_CONSUMER_GROUP"]["value"] == "analytics-$(POD_NAME)"
    # Kubernetes expands $(POD_NAME) only from a variable defined earlier in the list.
    assert env.index("POD_NAME") < env.index("VMC_ANALYTICS_CONSUMER_GROUP")


def test_consumers_scale_at_most_to_the_partition_count():
    documents = k8s_documents()
    (job,) = [doc for _, doc in documents if doc["kind"] == "Job"]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    partitions = int(re.search(r"--partitions (\d+)", command).group(1))
    compose_partitions = int(re.search(r"--partitions (\d+)", compose()["services"]["setup"]["entrypoint"][-1]).group(1))
    assert partitions == compose_partitions
    consumers = {"activities", "analytics"}  # the services with a consumer group (their app specs)
    for _, doc in documents:
        if doc["kind"] == "HorizontalPodAutoscaler" and doc["spec"]["scaleTargetRef"]["name"] in consumers:
            assert doc["spec"]["maxReplicas"] <= partitions
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"] in consumers:
            assert doc["spec"]["replicas"] <= partitions
    # And the topics step creates every topic a service publishes or dead-letters to.
    assert set(topic_names()) == {"vmc.registry.v1", "vmc.activities.v1", "vmc.activities-registry.dlq", "vmc.analytics.dlq"}


# ---- configuration -------------------------------------------------------------------------------

def test_setting_names_are_the_same_in_the_readme_compose_kubernetes_and_the_launcher():
    code = code_settings()
    # Each settings class also reads VMC_<PART>_NAME, its own name: documented as "leave it unset".
    names = {f"VMC_{part.upper()}_NAME" for part in PARTS}
    readme = readme_settings()
    assert code - names <= readme, f"read by the code, missing from README's table: {sorted(code - names - readme)}"
    assert readme - NOT_SETTINGS <= code, f"in README's table, read by no code: {sorted(readme - NOT_SETTINGS - code)}"
    compose_names = {n for s in compose()["services"].values() for n in (s.get("environment") or {}) if n.startswith("VMC_")}
    assert compose_names <= code, sorted(compose_names - code)
    k8s_names = set()
    for _, doc in k8s_documents():
        if doc["kind"] == "ConfigMap":
            k8s_names |= set(doc["data"])
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            k8s_names |= {e["name"] for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    assert k8s_names <= code | NOT_SETTINGS | DOWNWARD_API, sorted(k8s_names - code - NOT_SETTINGS - DOWNWARD_API)
    launcher = set(re.findall(r"VMC_[A-Z_]+", (ROOT / "deploy" / "embedded.py").read_text()))
    launcher = {n for n in launcher if not n.endswith("_")}  # f-string stems such as VMC_{name}_PORT
    assert launcher <= code | NOT_SETTINGS, sorted(launcher - code - NOT_SETTINGS)
    assert compose_names & k8s_names >= {"VMC_ENVIRONMENT", "VMC_INTERNAL_SECRET", "VMC_KAFKA_BOOTSTRAP",
                                         "VMC_KAFKA_IDEMPOTENCE", "VMC_REGISTRY_DATABASE_URL"}


PRODUCTION = {
    "VMC_ENVIRONMENT": "production",
    "VMC_INTERNAL_SECRET": "s" * 40,
    "VMC_KAFKA_BOOTSTRAP": "kafka:9092",
    "VMC_KAFKA_IDEMPOTENCE": "true",
    "VMC_REGISTRY_DATABASE_URL": "postgresql+asyncpg://registry:pw@127.0.0.1:1/registry",
}


@pytest.mark.parametrize("change, setting", [
    ({"VMC_INTERNAL_SECRET": None}, "VMC_INTERNAL_SECRET"),  # the development default
    ({"VMC_INTERNAL_SECRET": "short"}, "VMC_INTERNAL_SECRET"),
    ({"VMC_KAFKA_IDEMPOTENCE": "false"}, "VMC_KAFKA_IDEMPOTENCE"),
    ({"VMC_KAFKA_BOOTSTRAP": None}, "VMC_KAFKA_BOOTSTRAP"),  # missing: the default is this machine's
    ({"VMC_REGISTRY_DATABASE_URL": None}, "VMC_REGISTRY_DATABASE_URL"),  # missing: would be a SQLite file
    ({"VMC_KAFKA_SESSION_TIMEOUT_MS": "ten"}, "VMC_KAFKA_SESSION_TIMEOUT_MS"),  # malformed
    ({"VMC_KAFKA_ACKS": "2"}, "VMC_KAFKA_ACKS"),
    ({"VMC_ENVIRONMENT": "prod"}, "VMC_ENVIRONMENT"),
])
def test_production_refuses_to_start_naming_the_setting_in_one_line(change, setting, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMC_")}
    env.update(PRODUCTION, VMC_DATA_DIR=str(tmp_path))
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "registry"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmc serve registry: error: ") and setting in lines[0], result.stderr
    assert "pw@" not in result.stderr  # a database URL's password is never echoed


def test_production_does_not_migrate_at_start_unless_told():
    from services.registry.settings import RegistrySettings

    production = dict(environment="production", internal_secret="s" * 40, kafka_bootstrap="kafka:9092",
                      kafka_idempotence=True, database_url=PRODUCTION["VMC_REGISTRY_DATABASE_URL"])
    assert RegistrySettings(**production).migrates_on_start is False
    assert RegistrySettings(**production, migrate_on_start=True).migrates_on_start is True
    assert RegistrySettings(environment="development").migrates_on_start is True
