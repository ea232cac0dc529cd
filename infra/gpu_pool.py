"""The GPU nodes the server runs on: an autoscaled AKS agent pool, and the NVIDIA device plugin that makes its GPUs
schedulable (AKS installs the driver, not the plugin).

Pods bound for the pool select its label and tolerate its taint (and, on spot VMs, the taint AKS puts on spot nodes):
`node_selector` and `tolerations` are what the server's workload uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_azure_native import containerservice
from pulumi_kubernetes import apps, core, meta, networking

from infra.annotations import checkov_skips
from infra.cluster import toleration
from infra.moved import CLUSTER, WORKLOAD, moved_from
from infra.pod_security import locked_down_container, runtime_default_seccomp

GPU_TAINT = ("sku", "gpu", "NoSchedule")
GPU_POOL_LABEL = ("ggufstack.io/pool", "gpu")
# AKS taints spot nodes with this on its own; pods bound for them must tolerate it as well as the GPU taint.
SPOT_TAINT = ("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule")
# Long enough for the server's drain (the pod's termination grace period) before AKS gives up on a node.
GPU_DRAIN_TIMEOUT_MINUTES = 30

# Pinned like any other dependency; bump deliberately (https://github.com/NVIDIA/k8s-device-plugin/releases).
DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.4"
DEVICE_PLUGIN_SKIPS = {
    "CKV_K8S_8": "the device plugin serves no HTTP endpoint to probe; the kubelet restarts it if it exits",
    "CKV_K8S_9": "the device plugin serves no HTTP endpoint to probe; it registers with the kubelet over a socket",
    "CKV_K8S_23": "registering with the kubelet means writing a socket into a root-owned host directory",
    "CKV_K8S_40": "registering with the kubelet means writing a socket into a root-owned host directory",
    "CKV_K8S_43": "NVIDIA publishes tags, which are pinned here; a digest would be copied unverified from elsewhere",
}
DEVICE_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"


@dataclass(frozen=True)
class GpuPoolArgs:
    resource_group_name: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    kubernetes_version: str
    nodes_subnet_id: pulumi.Input[str]
    vm_size: str
    min_count: int
    max_count: int
    spot: bool
    os_disk_size_gb: int
    availability_zones: Sequence[str]
    max_surge: str
    max_pods: int
    # The cluster's Kubernetes provider, for the device plugin.
    provider: k8s.Provider
    tags: Mapping[str, str]


class GpuPool(pulumi.ComponentResource):
    node_selector: Mapping[str, str]
    tolerations: Sequence[Mapping[str, str]]

    def __init__(self, name: str, args: GpuPoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:GpuPool", name, None, opts)
        self.node_selector = dict([GPU_POOL_LABEL])
        self.tolerations = [toleration(taint) for taint in ([GPU_TAINT, SPOT_TAINT] if args.spot else [GPU_TAINT])]

        containerservice.AgentPool(
            f"{name}-nodes",
            agent_pool_name="gpu",
            resource_name_=args.cluster_name,
            resource_group_name=args.resource_group_name,
            mode="User",
            vm_size=args.vm_size,
            orchestrator_version=args.kubernetes_version,
            os_type="Linux",
            os_sku="Ubuntu",
            os_disk_size_gb=args.os_disk_size_gb,
            type="VirtualMachineScaleSets",
            vnet_subnet_id=args.nodes_subnet_id,
            availability_zones=list(args.availability_zones) or None,
            max_pods=args.max_pods,
            upgrade_settings=containerservice.AgentPoolUpgradeSettingsArgs(
                # A surge node must download and load the model before the old one is drained.
                max_surge=args.max_surge,
                drain_timeout_in_minutes=GPU_DRAIN_TIMEOUT_MINUTES,
                node_soak_duration_in_minutes=5,
            ),
            enable_auto_scaling=True,
            min_count=args.min_count,
            max_count=args.max_count,
            count=args.min_count,
            node_taints=["{}={}:{}".format(*GPU_TAINT)],
            node_labels=self.node_selector,
            gpu_profile=containerservice.GPUProfileArgs(driver="Install"),
            scale_set_priority="Spot" if args.spot else "Regular",
            scale_set_eviction_policy="Delete" if args.spot else None,
            spot_max_price=-1 if args.spot else None,  # pay up to the on-demand price rather than be evicted on price
            tags=args.tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                # The autoscaler owns the node count once the pool exists; re-applying `count` would fight it.
                ignore_changes=["count"],
                aliases=[moved_from(CLUSTER, "gpu")],
            ),
        )
        self._device_plugin(name, args)
        self.register_outputs({})

    def _device_plugin(self, name: str, args: GpuPoolArgs) -> None:
        labels = {"app.kubernetes.io/name": "nvidia-device-plugin", "app.kubernetes.io/part-of": "ggufstack"}
        resources = {"cpu": "50m", "memory": "64Mi"}
        apps.v1.DaemonSet(
            f"{name}-nvidia-device-plugin",
            metadata=meta.v1.ObjectMetaArgs(
                name="nvidia-device-plugin",
                # system-node-critical is only admitted in kube-system.
                namespace="kube-system",
                labels=labels,
                annotations=checkov_skips(DEVICE_PLUGIN_SKIPS),
            ),
            spec=apps.v1.DaemonSetSpecArgs(
                selector=meta.v1.LabelSelectorArgs(match_labels=labels),
                update_strategy=apps.v1.DaemonSetUpdateStrategyArgs(type="RollingUpdate"),
                template=core.v1.PodTemplateSpecArgs(
                    metadata=meta.v1.ObjectMetaArgs(labels=labels),
                    spec=core.v1.PodSpecArgs(
                        priority_class_name="system-node-critical",
                        automount_service_account_token=False,
                        node_selector=dict(self.node_selector),
                        tolerations=[core.v1.TolerationArgs(**t) for t in self.tolerations],
                        security_context=core.v1.PodSecurityContextArgs(seccomp_profile=runtime_default_seccomp()),
                        containers=[
                            core.v1.ContainerArgs(
                                name="nvidia-device-plugin",
                                image=DEVICE_PLUGIN_IMAGE,
                                image_pull_policy="Always",
                                # Keep running on a node whose driver is still being installed; it retries.
                                env=[core.v1.EnvVarArgs(name="FAIL_ON_INIT_ERROR", value="false")],
                                resources=core.v1.ResourceRequirementsArgs(
                                    requests=resources, limits={**resources, "memory": "128Mi"}
                                ),
                                security_context=locked_down_container(),
                                volume_mounts=[
                                    core.v1.VolumeMountArgs(name="device-plugin", mount_path=DEVICE_PLUGIN_DIR)
                                ],
                            )
                        ],
                        volumes=[
                            core.v1.VolumeArgs(
                                name="device-plugin",
                                host_path=core.v1.HostPathVolumeSourceArgs(path=DEVICE_PLUGIN_DIR, type="Directory"),
                            )
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, aliases=[moved_from(WORKLOAD, "nvidia-device-plugin")]
            ),
        )
        # The plugin talks to the kubelet over a host socket only: it gets no network at all.
        networking.v1.NetworkPolicy(
            f"{name}-nvidia-device-plugin-isolation",
            metadata=meta.v1.ObjectMetaArgs(name="nvidia-device-plugin", namespace="kube-system", labels=labels),
            spec=networking.v1.NetworkPolicySpecArgs(
                pod_selector=meta.v1.LabelSelectorArgs(match_labels=labels), policy_types=["Ingress", "Egress"]
            ),
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, aliases=[moved_from(WORKLOAD, "nvidia-device-plugin-isolation")]
            ),
        )
