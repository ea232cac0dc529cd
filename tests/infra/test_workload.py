"""The server's Kubernetes workload, as the program declares it."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from infra.workload import DRAIN_TIMEOUT_S, LIVENESS_PATH, READINESS_PATH, SERVER_UID
from server.api.routes.health import router
from server.config.settings import Settings
from tests.infra.harness import REPO, TENANT_ID, StackRun, run_program, stack_config

GPU_TOLERATION = {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
SPOT_TOLERATION = {
    "key": "kubernetes.azure.com/scalesetpriority",
    "operator": "Equal",
    "value": "spot",
    "effect": "NoSchedule",
}


def _object(stack: StackRun, kind: str, name: str) -> dict[str, Any]:
    found = [obj for _, obj in stack.kubernetes_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _pod(stack: StackRun) -> dict[str, Any]:
    return _object(stack, "Deployment", "ggufstack-server")["spec"]["template"]


def _container(stack: StackRun) -> dict[str, Any]:
    (container,) = _pod(stack)["spec"]["containers"]
    return container


def _server_identity(stack: StackRun) -> dict[str, Any]:
    return next(
        r.outputs
        for r in stack.of_type("azure-native:managedidentity:UserAssignedIdentity")
        if r.plain["resourceName"].endswith("-server")
    )


def test_every_object_is_applied_through_the_aks_provider(stack: StackRun) -> None:
    provider = stack.one("pulumi:providers:kubernetes")
    objects = list(stack.kubernetes_objects())
    # Workload 12 (PodMonitor for the HPA; the database bootstrap's ServiceAccount, NetworkPolicy and Job),
    # GpuPool 2 (the device plugin and its NetworkPolicy), Autoscaling 2, Ingress 7 (namespace, the gateway's
    # options, Gateway, HTTPRoute, and the certificate's ServiceAccount, SecretProviderClass and sync Deployment).
    assert len(objects) == 23
    components = {
        "ggufstack:infra:Workload",
        "ggufstack:infra:GpuPool",
        "ggufstack:infra:Autoscaling",
        "ggufstack:infra:Ingress",
    }
    for registration, _ in objects:
        assert registration.provider.startswith(provider.urn), registration.name
        assert stack.by_urn(registration.parent).type in components


def test_namespace_enforces_the_restricted_pod_security_standard(stack: StackRun) -> None:
    labels = _object(stack, "Namespace", "ggufstack")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_gpu_pods_tolerate_spot_eviction_taint_exactly_when_the_pool_is_spot(stack: StackRun) -> None:
    for spec in (_pod(stack)["spec"], _object(stack, "DaemonSet", "nvidia-device-plugin")["spec"]["template"]["spec"]):
        expected = [GPU_TOLERATION, SPOT_TOLERATION] if stack.cfg.gpu_spot else [GPU_TOLERATION]
        assert spec["tolerations"] == expected


def test_service_account_is_annotated_for_workload_identity(stack: StackRun) -> None:
    account = _object(stack, "ServiceAccount", "ggufstack-server")
    assert account["metadata"]["namespace"] == "ggufstack"
    assert account["metadata"]["annotations"] == {
        "azure.workload.identity/client-id": _server_identity(stack)["clientId"],
        "azure.workload.identity/tenant-id": TENANT_ID,
    }
    assert account["automountServiceAccountToken"] is False


def test_pod_uses_workload_identity_through_its_service_account(stack: StackRun) -> None:
    pod = _pod(stack)
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert pod["spec"]["serviceAccountName"] == "ggufstack-server"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_server_image_comes_from_the_stack_registry_by_tag(stack: StackRun) -> None:
    registry = stack.one("azure-native:containerregistry:Registry").outputs
    container = _container(stack)
    assert container["image"] == f"{registry['loginServer']}/ggufstack-server:{stack.cfg.server_image_tag}"
    assert container["imagePullPolicy"] == "Always"


def test_server_gets_one_gpu_and_fixed_cpu_and_memory(stack: StackRun) -> None:
    cfg = stack.cfg
    resources = _container(stack)["resources"]
    assert resources["requests"] == resources["limits"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    cpu = str(cfg.server_cpu) if cfg.server_cpu else f"{cfg.server_cpu_m}m"
    assert resources["limits"]["cpu"] == cpu
    assert resources["limits"]["memory"] == f"{cfg.server_memory_request_gi}Gi"
    assert resources["limits"]["ephemeral-storage"] == f"{cfg.model_cache_size_gi + 2}Gi"


def test_server_is_scheduled_only_on_the_gpu_pool(stack: StackRun) -> None:
    pool = stack.one("azure-native:containerservice:AgentPool").plain
    spec = _pod(stack)["spec"]
    assert spec["nodeSelector"] == pool["nodeLabels"]
    assert GPU_TOLERATION in spec["tolerations"]


def test_pod_environment_is_the_server_settings_contract(stack: StackRun) -> None:
    cfg = stack.cfg
    account = stack.one("azure-native:storage:StorageAccount").outputs
    env = {e["name"]: e["value"] for e in _container(stack)["env"]}
    fields = ["blob_account_url", "blob_container", "blob_name", "cache_dir", "n_gpu_layers", "n_ctx", "n_threads"]
    fields += ["host", "port", "log_level", "model_alias", "metrics_port", "drain_timeout_s"]
    fields += ["database_auth", "redis_auth", "model_watch_interval_s"]
    retention = {
        field: getattr(cfg, field)
        for field in ("audit_retention_days", "conversations_retention_days")
        if getattr(cfg, field) is not None
    }
    assert set(env) == {Settings.env_name(f) for f in [*fields, *retention]}
    assert env == Settings.to_env(
        blob_account_url=f"https://{account['name']}.blob.core.windows.net",
        blob_container="models",
        blob_name=cfg.model_blob_name,
        cache_dir="/models",
        n_gpu_layers=-1,
        n_ctx=cfg.context_size,
        n_threads=cfg.server_cpu_m // 1000,
        host="0.0.0.0",
        port=8000,
        metrics_port=9090,
        drain_timeout_s=DRAIN_TIMEOUT_S,
        log_level=cfg.log_level,
        model_alias=cfg.model_alias,
        database_auth="entra",
        redis_auth="entra",
        model_watch_interval_s=cfg.model_watch_interval_s,
        **retention,
    )
    assert all("valueFrom" not in e for e in _container(stack)["env"]), "no credentials in the environment"


def test_a_stack_sets_the_servers_retention_or_leaves_its_defaults(dev: StackRun, prod: StackRun) -> None:
    assert prod.cfg.audit_retention_days == 365, "Pulumi.prod.yaml keeps a year of audit rows"
    env = {e["name"]: e["value"] for e in _container(prod)["env"]}
    assert env[Settings.env_name("audit_retention_days")] == "365"
    assert Settings.env_name("conversations_retention_days") not in env, "unset: the server's default"
    dev_env = {e["name"] for e in _container(dev)["env"]}
    assert Settings.env_name("audit_retention_days") not in dev_env


def test_server_listens_where_the_settings_say(stack: StackRun) -> None:
    container = _container(stack)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert container["ports"] == [
        {"name": "http", "containerPort": int(env[Settings.env_name("port")]), "protocol": "TCP"},
        {"name": "metrics", "containerPort": int(env[Settings.env_name("metrics_port")]), "protocol": "TCP"},
    ]


def test_probes_use_the_health_endpoints_and_startup_allows_a_long_download(stack: StackRun) -> None:
    container = _container(stack)
    startup, readiness, liveness = (container[k] for k in ("startupProbe", "readinessProbe", "livenessProbe"))
    assert startup["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert readiness["httpGet"] == {"path": "/health/ready", "port": "http"}
    assert liveness["httpGet"] == {"path": "/health/live", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= stack.cfg.model_download_timeout_minutes * 60


def test_probed_paths_are_served_by_the_server() -> None:
    assert {LIVENESS_PATH, READINESS_PATH} <= {route.path for route in router.routes}


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cuda", "Dockerfile.cpu"])
def test_pod_layout_matches_the_server_images(stack: StackRun, dockerfile: str) -> None:
    text = (REPO / "images" / dockerfile).read_text()
    env = {e["name"]: e["value"] for e in _container(stack)["env"]}
    assert re.search(rf"^USER {SERVER_UID}:{SERVER_UID}$", text, re.MULTILINE), "runAsUser is the image's user"
    assert re.search(rf"^EXPOSE {env[Settings.env_name('port')]}$", text, re.MULTILINE)
    assert f"{Settings.env_name('cache_dir')}={env[Settings.env_name('cache_dir')]}" in text


def test_model_cache_and_tmp_are_volumes_on_a_read_only_root(stack: StackRun) -> None:
    container = _container(stack)
    env = {e["name"]: e["value"] for e in container["env"]}
    volumes = {v["name"]: v for v in _pod(stack)["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    cache = volumes[mounts[env[Settings.env_name("cache_dir")]]]
    assert cache["emptyDir"] == {"sizeLimit": f"{stack.cfg.model_cache_size_gi}Gi"}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_key_vault_secrets_are_mounted_as_files_through_the_csi_driver(stack: StackRun) -> None:
    vault = stack.one("azure-native:keyvault:Vault").outputs["name"]
    provider_class = _object(stack, "SecretProviderClass", "ggufstack-server-keyvault")
    parameters = provider_class["spec"]["parameters"]
    assert provider_class["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
    assert parameters["clientID"] == _server_identity(stack)["clientId"]
    assert (parameters["keyvaultName"], parameters["tenantId"], parameters["usePodIdentity"]) == (
        vault,
        TENANT_ID,
        "false",
    )
    objects = [json.loads(o) for o in json.loads(parameters["objects"])["array"]]
    assert objects == [
        {"objectName": name, "objectType": "secret", "objectAlias": Settings.env_name(field)}
        for name, field in (
            ("database-url", "database_url"),
            ("redis-url", "redis_url"),
            ("admin-api-key", "admin_api_key"),
            ("applicationinsights-connection-string", "applicationinsights_connection_string"),
        )
    ]
    secret_fields = ("database_url", "redis_url", "admin_api_key", "applicationinsights_connection_string")
    assert all(Settings.is_secret(field) for field in secret_fields)
    assert Settings.env_name("applicationinsights_connection_string") == "APPLICATIONINSIGHTS_CONNECTION_STRING"
    (volume,) = [v for v in _pod(stack)["spec"]["volumes"] if "csi" in v]
    assert volume["csi"] == {
        "driver": "secrets-store.csi.k8s.io",
        "readOnly": True,
        "volumeAttributes": {"secretProviderClass": "ggufstack-server-keyvault"},
    }
    (mount,) = [m for m in _container(stack)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": "/mnt/secrets-store", "readOnly": True}


def test_pod_and_container_run_locked_down(stack: StackRun) -> None:
    pod = _pod(stack)["spec"]["securityContext"]
    container = _container(stack)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == container["runAsUser"] == 10001
    assert pod["seccompProfile"] == container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["allowPrivilegeEscalation"] is False
    assert container["privileged"] is False
    assert container["capabilities"] == {"drop": ["ALL"]}


def test_rollouts_never_drop_capacity_and_drain_gracefully(stack: StackRun) -> None:
    deployment = _object(stack, "Deployment", "ggufstack-server")
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert "replicas" not in deployment["spec"], "KEDA's autoscaler owns the replica count"


def test_pods_outlive_the_endpoint_removal_and_the_servers_drain(stack: StackRun) -> None:
    env = {e["name"]: e["value"] for e in _container(stack)["env"]}
    drain = float(env[Settings.env_name("drain_timeout_s")])
    assert drain == Settings.model_fields["drain_timeout_s"].default, "the pod drains as long as the server would"
    pre_stop = _container(stack)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = _pod(stack)["spec"]["terminationGracePeriodSeconds"]
    assert pre_stop >= 5, "endpoint removal must reach the load balancers before draining starts"
    # SIGTERM (and the server's drain) starts only after preStop; the kubelet kills at the grace period.
    assert grace > pre_stop + drain


def test_deployment_waits_for_what_its_pods_reference(stack: StackRun) -> None:
    (deployment,) = [r for r, obj in stack.kubernetes_objects() if _is_server(obj)]
    needed = {
        r.urn
        for r, obj in stack.kubernetes_objects()
        if obj["kind"] in ("ServiceAccount", "SecretProviderClass")
        and obj["metadata"]["namespace"] == "ggufstack"
        and obj["metadata"]["name"] != "ggufstack-server-db-bootstrap"
    }
    assert needed <= set(deployment.dependencies)


def test_pulumi_waits_long_enough_for_a_first_rollout(stack: StackRun) -> None:
    (registration,) = [r for r, obj in stack.kubernetes_objects() if _is_server(obj)]
    minutes = int(registration.custom_timeouts["create"].removesuffix("m"))
    assert minutes > stack.cfg.model_download_timeout_minutes
    assert registration.custom_timeouts["update"] == registration.custom_timeouts["create"]
    deployment = _object(stack, "Deployment", "ggufstack-server")
    assert deployment["spec"]["progressDeadlineSeconds"] == minutes * 60


def test_service_is_internal(stack: StackRun) -> None:
    service = _object(stack, "Service", "ggufstack-server")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"].items() <= _pod(stack)["metadata"]["labels"].items()


def test_dev_runs_fewer_replicas_than_prod(dev: StackRun, prod: StackRun) -> None:
    def replicas(s: StackRun) -> int:
        return _object(s, "ScaledObject", "ggufstack-server")["spec"]["minReplicaCount"]

    assert replicas(dev) < replicas(prod)


def test_disruption_budget_covers_the_server_pods(stack: StackRun) -> None:
    pdb = _object(stack, "PodDisruptionBudget", "ggufstack-server")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= _pod(stack)["metadata"]["labels"].items()


def test_namespace_denies_all_traffic_by_default(stack: StackRun) -> None:
    deny = _object(stack, "NetworkPolicy", "default-deny")
    assert deny["metadata"]["namespace"] == "ggufstack"
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}


def _egress(stack: StackRun) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The server's egress rules as (protocol, port) -> allowed peers."""
    policy = _object(stack, "NetworkPolicy", "ggufstack-server")
    rules: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rule in policy["spec"]["egress"]:
        for port in rule["ports"]:
            rules.setdefault((port["protocol"], port["port"]), []).extend(rule["to"])
    return rules


def _subnet(stack: StackRun, name: str) -> str:
    return next(
        r.plain["addressPrefix"] for r in stack.of_type("azure-native:network:Subnet") if r.plain["subnetName"] == name
    )


def test_server_accepts_traffic_only_on_its_port(stack: StackRun) -> None:
    policy = _object(stack, "NetworkPolicy", "ggufstack-server")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= _pod(stack)["metadata"]["labels"].items()
    api, metrics = policy["spec"]["ingress"]
    assert api["ports"] == [{"protocol": "TCP", "port": 8000}]
    # Its own namespace and the ingress controller's, nothing else.
    assert api["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ggufstack-ingress"}}},
    ]
    # /metrics only to the managed Prometheus agent that runs the PodMonitor's scrape job.
    assert metrics == {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"rsName": "ama-metrics"}},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 9090}],
    }


def test_server_egress_is_dns_https_postgres_and_redis_only(stack: StackRun) -> None:
    egress = _egress(stack)
    assert set(egress) == {("UDP", 53), ("TCP", 53), ("TCP", 443), ("TCP", 5432), ("TCP", 10000)}
    kube_dns = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }
    assert egress[("UDP", 53)] == egress[("TCP", 53)] == [kube_dns]
    assert egress[("TCP", 5432)] == [{"ipBlock": {"cidr": _subnet(stack, "postgres")}}]


def test_prod_redis_egress_is_limited_to_the_private_endpoints(prod: StackRun) -> None:
    assert _egress(prod)[("TCP", 10000)] == [{"ipBlock": {"cidr": _subnet(prod, "private-endpoints")}}]


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet", "Job"])
def test_skipped_checks_carry_reasons(stack: StackRun, kind: str) -> None:
    for obj in [o for _, o in stack.kubernetes_objects() if o["kind"] == kind]:
        _assert_reasoned_skips(obj)


def _assert_reasoned_skips(obj: dict) -> None:
    skips = {k: v for k, v in obj["metadata"].get("annotations", {}).items() if k.startswith("checkov.io/skip")}
    assert skips
    for value in skips.values():
        check, reason = value.split("=", 1)
        assert re.fullmatch(r"CKV2?_K8S_\d+", check)
        assert len(reason) > 30, f"{check} needs a real reason"


def test_a_first_deployment_can_skip_the_rollout_await() -> None:
    """The first `up` waited for a rollout that needs an image, a model blob and a certificate the same run cannot
    provide, and failed after 50-65 minutes. With `skipRolloutAwait` the Deployment carries pulumi-kubernetes'
    `pulumi.com/skipAwait` annotation ("Kubernetes provider: Resource await behavior",
    https://www.pulumi.com/registry/packages/kubernetes/installation-configuration/#await-behavior), so `up` applies
    it and goes on; the first-`up` walkthrough (docs/infrastructure.md) says when to turn it off again."""
    bootstrap = run_program("dev", {**stack_config("dev"), "ggufstack:skipRolloutAwait": "true"})
    (deployment,) = [o for _, o in bootstrap.kubernetes_objects() if _is_server(o)]
    assert deployment["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"


def test_the_rollout_is_awaited_once_the_stack_is_bootstrapped(stack: StackRun) -> None:
    assert not stack.cfg.skip_rollout_await
    (deployment,) = [o for _, o in stack.kubernetes_objects() if _is_server(o)]
    assert "pulumi.com/skipAwait" not in deployment["metadata"].get("annotations", {})


def _is_server(obj: dict) -> bool:
    return obj["kind"] == "Deployment" and obj["metadata"]["name"] == "ggufstack-server"
