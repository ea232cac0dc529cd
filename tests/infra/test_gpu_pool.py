"""The GPU pool: an autoscaled, tainted AKS agent pool, and the NVIDIA device plugin that makes its GPUs schedulable."""

from __future__ import annotations

import re
from typing import Any

from infra.workload import TERMINATION_GRACE_SECONDS
from tests.infra.harness import StackRun

GPU_TOLERATION = {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}


def _object(stack: StackRun, kind: str, name: str) -> dict[str, Any]:
    (found,) = [obj for _, obj in stack.kubernetes_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    return found


def test_the_pool_and_its_device_plugin_are_one_component(stack: StackRun) -> None:
    pool = stack.one("azure-native:containerservice:AgentPool")
    plugin = [r for r, obj in stack.kubernetes_objects() if obj["metadata"]["name"] == "nvidia-device-plugin"]
    assert len(plugin) == 2  # the DaemonSet and its NetworkPolicy
    assert {stack.by_urn(r.parent).type for r in [pool, *plugin]} == {"ggufstack:infra:GpuPool"}


def test_gpu_pool_is_a_separate_tainted_autoscaled_agent_pool(stack: StackRun) -> None:
    cfg = stack.cfg
    cluster = stack.managed_cluster()
    pool = stack.one("azure-native:containerservice:AgentPool")
    inputs = pool.plain
    assert inputs["resourceName"] == cluster.outputs["name"]
    assert (inputs["agentPoolName"], inputs["mode"]) == ("gpu", "User")
    assert inputs["vmSize"] == cfg.gpu_vm_size
    assert inputs["nodeTaints"] == ["sku=gpu:NoSchedule"]
    assert inputs["nodeLabels"] == {"ggufstack.io/pool": "gpu"}
    assert inputs["enableAutoScaling"] is True
    assert (inputs["minCount"], inputs["maxCount"]) == (cfg.gpu_node_min, cfg.gpu_node_max)
    assert inputs["count"] == cfg.gpu_node_min
    assert inputs["gpuProfile"] == {"driver": "Install"}
    assert inputs["orchestratorVersion"] == cfg.kubernetes_version


def test_gpu_pool_count_is_left_to_the_autoscaler(stack: StackRun) -> None:
    assert stack.one("azure-native:containerservice:AgentPool").ignore_changes == ["count"]


def test_dev_gpu_pool_is_spot_and_scales_to_zero(dev: StackRun) -> None:
    pool = dev.one("azure-native:containerservice:AgentPool").plain
    assert (pool["scaleSetPriority"], pool["scaleSetEvictionPolicy"], pool["spotMaxPrice"]) == ("Spot", "Delete", -1)
    assert pool["minCount"] == 0


def test_prod_gpu_pool_is_on_demand(prod: StackRun) -> None:
    pool = prod.one("azure-native:containerservice:AgentPool").plain
    assert pool["scaleSetPriority"] == "Regular"
    assert "spotMaxPrice" not in pool


def test_gpu_pool_spreads_over_zones_and_surges_before_draining(stack: StackRun) -> None:
    pool = stack.one("azure-native:containerservice:AgentPool").plain
    assert pool.get("availabilityZones", []) == stack.cfg.gpu_availability_zones
    assert pool["upgradeSettings"]["maxSurge"] == stack.cfg.gpu_max_surge
    assert pool["upgradeSettings"]["drainTimeoutInMinutes"] * 60 > TERMINATION_GRACE_SECONDS


def test_prod_gpu_pool_is_zonal(prod: StackRun) -> None:
    assert prod.one("azure-native:containerservice:AgentPool").plain["availabilityZones"] == ["1", "2", "3"]


def test_device_plugin_runs_on_gpu_nodes_with_a_pinned_image(stack: StackRun) -> None:
    daemonset = _object(stack, "DaemonSet", "nvidia-device-plugin")
    pool = stack.one("azure-native:containerservice:AgentPool").plain
    spec = daemonset["spec"]["template"]["spec"]
    assert daemonset["metadata"]["namespace"] == "kube-system"
    (container,) = spec["containers"]
    assert re.fullmatch(r"nvcr\.io/nvidia/k8s-device-plugin:v\d+\.\d+\.\d+", container["image"])
    assert GPU_TOLERATION in spec["tolerations"]
    assert spec["nodeSelector"] == pool["nodeLabels"]
    assert spec["priorityClassName"] == "system-node-critical"
    assert container["volumeMounts"] == [{"name": "device-plugin", "mountPath": "/var/lib/kubelet/device-plugins"}]


def test_device_plugin_is_cut_off_from_the_network(stack: StackRun) -> None:
    policy = _object(stack, "NetworkPolicy", "nvidia-device-plugin")
    daemonset = _object(stack, "DaemonSet", "nvidia-device-plugin")
    assert policy["metadata"]["namespace"] == "kube-system"
    assert policy["spec"]["podSelector"]["matchLabels"] == daemonset["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"] and "egress" not in policy["spec"]
