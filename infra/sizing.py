"""What one server replica may request on a GPU node: the VM's size, less what AKS reserves, less the add-ons.

The scheduler places a pod only if its requests fit the node's *allocatable* resources, which are the VM's capacity
minus AKS's kube-reserved CPU and memory and the kubelet's eviction threshold, and it counts the DaemonSets that run on
every node (network, CSI drivers, monitoring agents, the NVIDIA device plugin) against the same allocatable. A request
sized from the VM alone can therefore never schedule: this module does the arithmetic once, for every size the config
accepts, so the config can refuse such a request before anything is deployed.

Reservation rules: https://learn.microsoft.com/azure/aks/node-resource-reservations (AKS 1.29 and later).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class GpuVmSize:
    gpus: int
    vcpus: int
    memory_gib: int
    # One GPU's memory as nvidia-smi reports it: a replica gets one GPU, and what it offloads lives there.
    gpu_memory_mib: int


# GPU sizes AKS supports with its managed NVIDIA driver. Partial-GPU (NVv5/A10) sizes need GRID drivers and the
# retired NCv3 sizes can no longer be created, so neither is offered.
# Each GPU's memory in MiB, as nvidia-smi reports it (the sizes' pages name the GPUs: T4 16 GB, A100 40 or 80 GB,
# H100 NVL 94 GB, H100 80 GB).
_T4 = 15_360
_A100_40GB = 40_960
_A100_80GB = 81_920
_H100_NVL = 95_830
_H100_80GB = 81_559

GPU_VM_SIZES: Mapping[str, GpuVmSize] = {
    "Standard_NC4as_T4_v3": GpuVmSize(1, 4, 28, _T4),
    "Standard_NC8as_T4_v3": GpuVmSize(1, 8, 56, _T4),
    "Standard_NC16as_T4_v3": GpuVmSize(1, 16, 110, _T4),
    "Standard_NC64as_T4_v3": GpuVmSize(4, 64, 440, _T4),
    "Standard_NC24ads_A100_v4": GpuVmSize(1, 24, 220, _A100_80GB),
    "Standard_NC48ads_A100_v4": GpuVmSize(2, 48, 440, _A100_80GB),
    "Standard_NC96ads_A100_v4": GpuVmSize(4, 96, 880, _A100_80GB),
    "Standard_NC40ads_H100_v5": GpuVmSize(1, 40, 320, _H100_NVL),
    "Standard_NC80adis_H100_v5": GpuVmSize(2, 80, 640, _H100_NVL),
    "Standard_ND96asr_v4": GpuVmSize(8, 96, 900, _A100_40GB),
    "Standard_ND96amsr_A100_v4": GpuVmSize(8, 96, 1900, _A100_80GB),
    "Standard_ND96isr_H100_v5": GpuVmSize(8, 96, 1900, _H100_80GB),
}

# The GPU pool's pod limit; set on the pool, because AKS reserves memory per pod the node *could* run (the overlay
# default is 250, which would reserve about 5 GiB for pods a GPU node never runs).
GPU_NODE_MAX_PODS = 30

# AKS's kube-reserved CPU (millicores) at the core counts its documentation tabulates; linear in between, and 10m per
# core beyond the last point as between the last two.
_KUBE_RESERVED_CPU_M = ((1, 60), (2, 100), (4, 140), (8, 180), (16, 260), (32, 420), (64, 740))
# kube-reserved memory: 20 MiB per schedulable pod plus 50 MiB, at most a quarter of the VM; and the eviction threshold.
_MEMORY_PER_POD_MI = 20
_MEMORY_BASE_MI = 50
EVICTION_THRESHOLD_MI = 100

# Requests of the DaemonSets AKS and this stack put on every GPU node, rounded up: cilium and azure-cns, kube-proxy's
# replacement, cloud-node-manager, the disk/file CSI nodes, the Key Vault CSI driver and its provider, the Container
# Insights and managed Prometheus node agents (ama-logs, ama-metrics-node), and the NVIDIA device plugin. An estimate:
# `kubectl describe node` on the first GPU node shows the real sum, and this budget should stay above it.
DAEMONSETS_CPU_M = 1000
DAEMONSETS_MEMORY_MI = 2048


# Layers the server offloads to the GPU unless a catalogue model says otherwise: all of them (the pod's layout).
POD_GPU_LAYERS = -1


def kube_reserved_cpu_m(vcpus: int) -> int:
    points = _KUBE_RESERVED_CPU_M
    for (low_cores, low_m), (high_cores, high_m) in itertools.pairwise(points):
        if vcpus <= high_cores:
            return low_m + (high_m - low_m) * (vcpus - low_cores) // (high_cores - low_cores)
    last_cores, last_m = points[-1]
    return last_m + 10 * (vcpus - last_cores)


def kube_reserved_memory_mi(memory_mi: int, max_pods: int) -> int:
    return min(_MEMORY_PER_POD_MI * max_pods + _MEMORY_BASE_MI, memory_mi // 4)


@dataclass(frozen=True)
class ReplicaShare:
    """The most one replica may request on a node of the size: allocatable less the DaemonSets, per GPU."""

    cpu_m: int
    memory_mi: int

    @property
    def cores(self) -> int:
        return self.cpu_m // 1000

    @property
    def memory_gi(self) -> int:
        return self.memory_mi // 1024


def replica_share(size: GpuVmSize, max_pods: int = GPU_NODE_MAX_PODS) -> ReplicaShare:
    cpu_m = size.vcpus * 1000
    memory_mi = size.memory_gib * 1024
    allocatable_cpu_m = cpu_m - kube_reserved_cpu_m(size.vcpus)
    allocatable_memory_mi = memory_mi - kube_reserved_memory_mi(memory_mi, max_pods) - EVICTION_THRESHOLD_MI
    return ReplicaShare(
        cpu_m=(allocatable_cpu_m - DAEMONSETS_CPU_M) // size.gpus,
        memory_mi=(allocatable_memory_mi - DAEMONSETS_MEMORY_MI) // size.gpus,
    )
