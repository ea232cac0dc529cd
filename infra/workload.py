"""The server's Kubernetes workload on AKS, applied through the cluster's provider: its namespace, service account,
secrets mount, Deployment, Service, PodMonitor and PodDisruptionBudget, and as its children the database bootstrap
job (infra/database_bootstrap.py) and the namespace's NetworkPolicies (infra/network_policies.py).

The pod gets the server's settings by the server's own names (infra/pod_settings.py): plain ones in its environment,
secret ones as read-only files the Key Vault secrets provider mounts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes import apps, core, meta, policy

from infra import pod_settings
from infra.annotations import SKIP_AWAIT, checkov_skips
from infra.database_bootstrap import DatabaseBootstrap, bootstrap_job
from infra.network_policies import ServerTraffic, server_policies
from infra.pod_security import locked_down_container, non_root_pod
from infra.server_metrics import JOB as SCRAPE_JOB
from infra.sizing import POD_GPU_LAYERS
from infra.vault import secret_provider_objects
from server.config.settings import DEFAULT_SECRETS_DIR, Settings

# The Kubernetes namespace the server runs in.
SERVER_NAMESPACE = "ggufstack"
SERVICE_ACCOUNT = "ggufstack-server"
APP = "ggufstack-server"
SERVER_PORT = 8000
# /metrics on a port of its own, which the NetworkPolicy opens only to the managed Prometheus agents.
METRICS_PORT = 9090
METRICS_PATH = "/metrics"
SERVICE_PORT = 80
# On SIGTERM the server stops taking new generations and lets those in flight finish for up to its drain timeout.
# Before that, the preStop wait keeps it serving while the endpoint removal reaches kube-proxy, the ingress and KEDA;
# the grace period covers both plus a margin for the process to exit, so the kubelet never SIGKILLs a drain.
DRAIN_TIMEOUT_S = int(Settings.model_fields["drain_timeout_s"].default)
PRE_STOP_SECONDS = 10
EXIT_MARGIN_SECONDS = 15
TERMINATION_GRACE_SECONDS = PRE_STOP_SECONDS + DRAIN_TIMEOUT_S + EXIT_MARGIN_SECONDS
# Where the server images keep models (their VOLUME); here it is an emptyDir with a size limit.
CACHE_DIR = "/models"
LIVENESS_PATH = "/health/live"
# 503 until the model is downloaded and loaded.
READINESS_PATH = "/health/ready"
SECRETS_DIR = str(DEFAULT_SECRETS_DIR)
SECRET_PROVIDER_CLASS = f"{APP}-keyvault"
# The image's unprivileged user; fixed so the kubelet can enforce non-root without reading the image.
SERVER_UID = 10001

SERVER_SKIPS = {
    "CKV_K8S_43": "images are built by this repository's CI and deployed by an immutable release tag (serverImageTag)",
}


@dataclass(frozen=True)
class WorkloadArgs:
    # The cluster's Kubernetes provider.
    provider: k8s.Provider
    image: pulumi.Input[str]
    # The server's settings by their field names in server/config/settings.py (None: the server's default); the pod's
    # layout (addresses, ports, cache directory, threads, drain timeout) is the workload's own.
    settings: Mapping[str, pulumi.Input[Any]]
    identity_client_id: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    vault_name: pulumi.Input[str]
    cpu_m: int
    memory_gi: int
    cache_size_gi: int
    download_timeout_minutes: int
    gpu_node_selector: Mapping[str, str]
    gpu_tolerations: Sequence[Mapping[str, str]]
    # Egress destinations: the data services' private addresses (None: they are reached on public endpoints).
    endpoints_cidr: str | None
    postgres_cidr: str
    # The ingress controller's namespace, the one namespace outside the server's own admitted to its API port.
    ingress_namespace: str | None
    # With Entra auth: the job that creates the server's database role and database; None with password auth.
    database_bootstrap: DatabaseBootstrap | None = None
    # False on a first deployment: the rollout needs an image, a model blob and a certificate that the same run
    # cannot provide, so `pulumi up` does not wait for it (pulumi-kubernetes' skipAwait annotation).
    await_rollout: bool = True


class Workload(pulumi.ComponentResource):
    service_url: str
    # For the components that add objects to the server's namespace (ingress, autoscaling) to wait for.
    namespace: core.v1.Namespace

    def __init__(self, name: str, args: WorkloadArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Workload", name, None, opts)
        provider = args.provider
        on_cluster = pulumi.ResourceOptions(parent=self, provider=provider)

        namespace = core.v1.Namespace(
            f"{name}-namespace",
            metadata=meta.v1.ObjectMetaArgs(
                name=SERVER_NAMESPACE,
                labels={
                    # The API server rejects any pod here that does not meet the "restricted" standard.
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            ),
            opts=on_cluster,
        )
        in_namespace = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[namespace])

        service_account = core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=meta.v1.ObjectMetaArgs(
                name=SERVICE_ACCOUNT,
                namespace=SERVER_NAMESPACE,
                labels=_labels(),
                annotations={
                    "azure.workload.identity/client-id": args.identity_client_id,
                    "azure.workload.identity/tenant-id": args.tenant_id,
                },
            ),
            # The workload identity webhook projects its own token; the API token is not needed.
            automount_service_account_token=False,
            opts=in_namespace,
        )
        secret_provider = k8s.apiextensions.CustomResource(
            f"{name}-keyvault",
            api_version="secrets-store.csi.x-k8s.io/v1",
            kind="SecretProviderClass",
            metadata=meta.v1.ObjectMetaArgs(name=SECRET_PROVIDER_CLASS, namespace=SERVER_NAMESPACE, labels=_labels()),
            spec={
                "provider": "azure",
                "parameters": {
                    "usePodIdentity": "false",
                    "clientID": args.identity_client_id,
                    "keyvaultName": args.vault_name,
                    "tenantId": args.tenant_id,
                    # The driver parses this as YAML; JSON is YAML and needs no YAML library here.
                    # Only secrets this stack writes: the driver fails the whole mount when one object is missing,
                    # so a hand-imported one (the ingress certificate, infra/ingress.py) would hold the pod back.
                    "objects": secret_provider_objects(pod_settings.secret_files()),
                },
            },
            opts=in_namespace,
        )

        bootstrap = None
        if args.database_bootstrap is not None:
            bootstrap = bootstrap_job(
                name,
                args.database_bootstrap,
                namespace=SERVER_NAMESPACE,
                image=args.image,
                tenant_id=args.tenant_id,
                run_as_uid=SERVER_UID,
                node_selector=args.gpu_node_selector,
                tolerations=args.gpu_tolerations,
                postgres_cidr=args.postgres_cidr,
                await_rollout=args.await_rollout,
                timeout_minutes=_rollout_minutes(args),
                parent=self,
                provider=provider,
                depends_on=[namespace],
            )

        apps.v1.Deployment(
            f"{name}-server",
            metadata=meta.v1.ObjectMetaArgs(
                name=APP,
                namespace=SERVER_NAMESPACE,
                labels=_labels(),
                annotations={**checkov_skips(SERVER_SKIPS), **({} if args.await_rollout else SKIP_AWAIT)},
            ),
            spec=self._deployment_spec(args),
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=provider,
                # Pods cannot start before their service account and their volume's SecretProviderClass exist, and
                # the server's migrations need its database role.
                depends_on=[namespace, service_account, secret_provider, *([bootstrap] if bootstrap else [])],
                # Pulumi waits for the rollout; a first rollout may wait for a GPU node and a multi-GB download.
                custom_timeouts=pulumi.CustomTimeouts(
                    create=f"{_rollout_minutes(args)}m", update=f"{_rollout_minutes(args)}m"
                ),
            ),
        )
        core.v1.Service(
            f"{name}-service",
            metadata=meta.v1.ObjectMetaArgs(name=APP, namespace=SERVER_NAMESPACE, labels=_labels()),
            spec=core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=_selector(),
                ports=[core.v1.ServicePortArgs(name="http", port=SERVICE_PORT, target_port="http", protocol="TCP")],
            ),
            opts=in_namespace,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-pod-monitor",
            api_version="azmonitoring.coreos.com/v1",
            kind="PodMonitor",
            metadata=meta.v1.ObjectMetaArgs(name=APP, namespace=SERVER_NAMESPACE, labels=_labels()),
            spec={
                "selector": {"matchLabels": _selector()},
                "podMetricsEndpoints": [
                    {
                        "port": "metrics",
                        "path": METRICS_PATH,
                        "interval": "30s",
                        # The `job` label the dashboards, alerts and KEDA select on, rather than a derived name.
                        "relabelings": [{"action": "replace", "targetLabel": "job", "replacement": SCRAPE_JOB}],
                    }
                ],
            },
            opts=in_namespace,
        )
        policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta.v1.ObjectMetaArgs(name=APP, namespace=SERVER_NAMESPACE, labels=_labels()),
            spec=policy.v1.PodDisruptionBudgetSpecArgs(
                # One at a time, so node drains never take all replicas; with a single replica a drain still
                # proceeds (a minAvailable of 1 would block AKS upgrades forever).
                max_unavailable=1,
                unhealthy_pod_eviction_policy="AlwaysAllow",
                selector=meta.v1.LabelSelectorArgs(match_labels=_selector()),
            ),
            opts=in_namespace,
        )
        server_policies(
            name,
            ServerTraffic(
                namespace=SERVER_NAMESPACE,
                name=APP,
                selector=_selector(),
                labels=_labels(),
                api_port=SERVER_PORT,
                metrics_port=METRICS_PORT,
                ingress_namespace=args.ingress_namespace,
                postgres_cidr=args.postgres_cidr,
                endpoints_cidr=args.endpoints_cidr,
            ),
            in_namespace,
        )

        self.service_url = f"http://{APP}.{SERVER_NAMESPACE}.svc.cluster.local"
        self.namespace = namespace
        self.register_outputs({"service_url": self.service_url})

    def _deployment_spec(self, args: WorkloadArgs) -> apps.v1.DeploymentSpecArgs:
        env = pod_settings.environment(
            args.settings,
            layout={
                "cache_dir": CACHE_DIR,
                "n_gpu_layers": POD_GPU_LAYERS,
                "n_threads": max(1, args.cpu_m // 1000),
                "host": "0.0.0.0",  # inside the pod; the Service and NetworkPolicy bound who can reach it
                "port": SERVER_PORT,
                "metrics_port": METRICS_PORT,
                "drain_timeout_s": DRAIN_TIMEOUT_S,
            },
        )
        resources = {
            "cpu": f"{args.cpu_m}m" if args.cpu_m % 1000 else str(args.cpu_m // 1000),
            "memory": f"{args.memory_gi}Gi",
            "nvidia.com/gpu": "1",
            # The model cache lives on the node's disk; reserving it keeps the scheduler from overcommitting disk.
            "ephemeral-storage": f"{args.cache_size_gi + 2}Gi",
        }
        probe_period = 10
        container = core.v1.ContainerArgs(
            name="server",
            image=args.image,
            # The tag is immutable in practice, so Always only costs a manifest check and guards against a re-push.
            image_pull_policy="Always",
            ports=[
                core.v1.ContainerPortArgs(name="http", container_port=SERVER_PORT, protocol="TCP"),
                core.v1.ContainerPortArgs(name="metrics", container_port=METRICS_PORT, protocol="TCP"),
            ],
            env=env,
            resources=core.v1.ResourceRequirementsArgs(requests=resources, limits=resources),
            # Startup covers the download and load of the model; liveness only starts counting after it.
            startup_probe=_http_probe(READINESS_PATH, probe_period, args.download_timeout_minutes * 60 // probe_period),
            readiness_probe=_http_probe(READINESS_PATH, probe_period, 3),
            liveness_probe=_http_probe(LIVENESS_PATH, 20, 3),
            lifecycle=core.v1.LifecycleArgs(
                # Let endpoint removal reach the load balancers before the server starts refusing connections.
                pre_stop=core.v1.LifecycleHandlerArgs(sleep=core.v1.SleepActionArgs(seconds=PRE_STOP_SECONDS))
            ),
            security_context=locked_down_container(run_as_uid=SERVER_UID),
            volume_mounts=[
                core.v1.VolumeMountArgs(name="model-cache", mount_path=CACHE_DIR),
                core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),  # noqa: S108 - a private emptyDir
                core.v1.VolumeMountArgs(name="secrets", mount_path=SECRETS_DIR, read_only=True),
            ],
        )
        pod_labels = {**_labels(), "azure.workload.identity/use": "true"}
        return apps.v1.DeploymentSpecArgs(
            # No `replicas`: KEDA's autoscaler owns the count, and re-applying one would fight it.
            selector=meta.v1.LabelSelectorArgs(match_labels=_selector()),
            strategy=apps.v1.DeploymentStrategyArgs(
                type="RollingUpdate",
                # Never drop below the current capacity; the new pod must download and load the model first.
                rolling_update=apps.v1.RollingUpdateDeploymentArgs(max_unavailable=0, max_surge=1),
            ),
            progress_deadline_seconds=_rollout_minutes(args) * 60,
            revision_history_limit=5,
            template=core.v1.PodTemplateSpecArgs(
                metadata=meta.v1.ObjectMetaArgs(labels=pod_labels),
                spec=core.v1.PodSpecArgs(
                    service_account_name=SERVICE_ACCOUNT,
                    automount_service_account_token=False,
                    node_selector=dict(args.gpu_node_selector),
                    tolerations=[core.v1.TolerationArgs(**t) for t in args.gpu_tolerations],
                    topology_spread_constraints=[
                        core.v1.TopologySpreadConstraintArgs(
                            max_skew=1,
                            topology_key="kubernetes.io/hostname",
                            when_unsatisfiable="ScheduleAnyway",
                            label_selector=meta.v1.LabelSelectorArgs(match_labels=_selector()),
                        )
                    ],
                    termination_grace_period_seconds=TERMINATION_GRACE_SECONDS,
                    security_context=non_root_pod(SERVER_UID, fs_group=True),
                    containers=[container],
                    volumes=[
                        core.v1.VolumeArgs(
                            name="model-cache",
                            empty_dir=core.v1.EmptyDirVolumeSourceArgs(size_limit=f"{args.cache_size_gi}Gi"),
                        ),
                        core.v1.VolumeArgs(name="tmp", empty_dir=core.v1.EmptyDirVolumeSourceArgs(size_limit="1Gi")),
                        core.v1.VolumeArgs(
                            name="secrets",
                            csi=core.v1.CSIVolumeSourceArgs(
                                driver="secrets-store.csi.k8s.io",
                                read_only=True,
                                volume_attributes={"secretProviderClass": SECRET_PROVIDER_CLASS},
                            ),
                        ),
                    ],
                ),
            ),
        )


def _labels() -> dict[str, str]:
    return {**_selector(), "app.kubernetes.io/part-of": "ggufstack", "app.kubernetes.io/managed-by": "pulumi"}


def _selector() -> dict[str, str]:
    return {"app.kubernetes.io/name": APP}


def _rollout_minutes(args: WorkloadArgs) -> int:
    # Scaling a GPU pool up (possibly from zero) and installing its driver takes up to about 20 minutes.
    return args.download_timeout_minutes + 20


def _http_probe(path: str, period: int, failures: int) -> core.v1.ProbeArgs:
    return core.v1.ProbeArgs(
        http_get=core.v1.HTTPGetActionArgs(path=path, port="http"),
        period_seconds=period,
        timeout_seconds=5,
        failure_threshold=failures,
    )
