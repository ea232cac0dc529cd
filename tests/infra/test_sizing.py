"""The pod's requests against what a GPU node really offers: AKS's reservations and the node's DaemonSets."""

from __future__ import annotations

import pytest

from infra.config import GPU_VM_SIZES
from infra.sizing import (
    DAEMONSETS_CPU_M,
    DAEMONSETS_MEMORY_MI,
    EVICTION_THRESHOLD_MI,
    GPU_NODE_MAX_PODS,
    kube_reserved_cpu_m,
    kube_reserved_memory_mi,
    replica_share,
)
from tests.infra.harness import StackRun


@pytest.mark.parametrize(
    ("cores", "millicores"), [(1, 60), (2, 100), (4, 140), (8, 180), (16, 260), (32, 420), (64, 740), (96, 1060)]
)
def test_kube_reserved_cpu_follows_the_aks_table(cores: int, millicores: int) -> None:
    assert kube_reserved_cpu_m(cores) == millicores


def test_kube_reserved_memory_is_per_pod_capped_at_a_quarter() -> None:
    # AKS's own examples: 30 pods on 8 GB reserve 650 MB; 70 pods on 4 GB hit the 25% cap.
    assert kube_reserved_memory_mi(8192, 30) == 650
    assert kube_reserved_memory_mi(4096, 70) == 1024


def test_the_t4_node_leaves_less_than_its_vcpus_to_the_server() -> None:
    share = replica_share(GPU_VM_SIZES["Standard_NC4as_T4_v3"])
    assert share.cpu_m == 4000 - 140 - DAEMONSETS_CPU_M == 2860
    assert share.memory_mi == 28 * 1024 - (20 * GPU_NODE_MAX_PODS + 50) - EVICTION_THRESHOLD_MI - DAEMONSETS_MEMORY_MI
    assert share.cores == 2, "3 cores, the old dev value, can never be scheduled there"


@pytest.mark.parametrize("size", sorted(GPU_VM_SIZES))
def test_every_accepted_size_leaves_room_for_a_replica_per_gpu(size: str) -> None:
    share = replica_share(GPU_VM_SIZES[size])
    assert share.cores >= 1 and share.memory_gi >= 16


def test_gpu_pool_declares_the_pod_limit_the_reservation_assumes(stack: StackRun) -> None:
    assert stack.one("azure-native:containerservice:AgentPool").plain["maxPods"] == GPU_NODE_MAX_PODS


def test_server_requests_fit_the_gpu_nodes_share(stack: StackRun) -> None:
    share = stack.cfg.replica_share
    (deployment,) = [o for _, o in stack.kubernetes_objects() if o["kind"] == "Deployment" and _server(o)]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    cpu = container["resources"]["requests"]["cpu"]
    millicores = int(cpu[:-1]) if cpu.endswith("m") else int(cpu) * 1000
    assert 1000 <= millicores <= share.cpu_m
    assert int(container["resources"]["requests"]["memory"].removesuffix("Gi")) * 1024 <= share.memory_mi


def test_dev_requests_its_whole_share(dev: StackRun) -> None:
    (deployment,) = [o for _, o in dev.kubernetes_objects() if o["kind"] == "Deployment" and _server(o)]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"] == "2800m"


def _server(obj: dict) -> bool:
    return obj["metadata"]["name"] == "ggufstack-server"
