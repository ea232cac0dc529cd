"""The server namespace's NetworkPolicies: all traffic denied, then exactly the server's own; and the rules they are
built from, which the database bootstrap job's policy uses too. Cilium (the cluster's policy engine) enforces them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_kubernetes import meta, networking

from infra.network import HTTPS_PORT, POSTGRES_PORT, REDIS_PORT

KUBE_SYSTEM = {"kubernetes.io/metadata.name": "kube-system"}
# The managed Prometheus agent that runs custom scrape jobs (PodMonitors): its replica pod in kube-system.
PROMETHEUS_AGENT_LABELS = {"rsName": "ama-metrics"}


@dataclass(frozen=True)
class ServerTraffic:
    """Who may reach the server, and where it may go."""

    namespace: str
    name: str
    selector: Mapping[str, str]
    labels: Mapping[str, str]
    api_port: int
    # /metrics on a port of its own, open only to the managed Prometheus agents.
    metrics_port: int
    # The ingress controller's namespace, the one namespace outside the server's own admitted to its API port.
    ingress_namespace: str | None
    postgres_cidr: str
    # The data services' private addresses (None: they are reached on public endpoints).
    endpoints_cidr: str | None


def server_policies(name: str, traffic: ServerTraffic, opts: pulumi.ResourceOptions) -> None:
    """Deny everything in the namespace, then allow the server's traffic; `opts` places them in the workload."""
    networking.v1.NetworkPolicy(
        f"{name}-default-deny",
        metadata=meta.v1.ObjectMetaArgs(name="default-deny", namespace=traffic.namespace, labels=dict(traffic.labels)),
        spec=networking.v1.NetworkPolicySpecArgs(
            pod_selector=meta.v1.LabelSelectorArgs(), policy_types=["Ingress", "Egress"]
        ),
        opts=opts,
    )
    sources = [networking.v1.NetworkPolicyPeerArgs(pod_selector=meta.v1.LabelSelectorArgs())]
    if traffic.ingress_namespace:
        sources.append(
            networking.v1.NetworkPolicyPeerArgs(
                namespace_selector=meta.v1.LabelSelectorArgs(
                    match_labels={"kubernetes.io/metadata.name": traffic.ingress_namespace}
                )
            )
        )
    scrapers = [
        networking.v1.NetworkPolicyPeerArgs(
            namespace_selector=meta.v1.LabelSelectorArgs(match_labels=KUBE_SYSTEM),
            pod_selector=meta.v1.LabelSelectorArgs(match_labels=PROMETHEUS_AGENT_LABELS),
        )
    ]
    anywhere = "0.0.0.0/0"
    networking.v1.NetworkPolicy(
        f"{name}-server",
        metadata=meta.v1.ObjectMetaArgs(name=traffic.name, namespace=traffic.namespace, labels=dict(traffic.labels)),
        spec=networking.v1.NetworkPolicySpecArgs(
            pod_selector=meta.v1.LabelSelectorArgs(match_labels=dict(traffic.selector)),
            policy_types=["Ingress", "Egress"],
            ingress=[
                networking.v1.NetworkPolicyIngressRuleArgs(from_=sources, ports=[tcp(traffic.api_port)]),
                networking.v1.NetworkPolicyIngressRuleArgs(from_=scrapers, ports=[tcp(traffic.metrics_port)]),
            ],
            egress=[
                dns_egress(),
                # Entra ID's token endpoint (workload identity) has no fixed address range, so HTTPS egress
                # cannot be narrowed further; with private endpoints, Blob and Key Vault resolve into the VNet.
                egress(anywhere, HTTPS_PORT),
                egress(traffic.postgres_cidr, POSTGRES_PORT),
                egress(traffic.endpoints_cidr or anywhere, REDIS_PORT),
            ],
        ),
        opts=opts,
    )


def tcp(port: int) -> networking.v1.NetworkPolicyPortArgs:
    return networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=port)


def dns_egress() -> networking.v1.NetworkPolicyEgressRuleArgs:
    return networking.v1.NetworkPolicyEgressRuleArgs(
        to=[
            networking.v1.NetworkPolicyPeerArgs(
                namespace_selector=meta.v1.LabelSelectorArgs(match_labels=KUBE_SYSTEM),
                pod_selector=meta.v1.LabelSelectorArgs(match_labels={"k8s-app": "kube-dns"}),
            )
        ],
        ports=[
            networking.v1.NetworkPolicyPortArgs(protocol="UDP", port=53),
            networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=53),
        ],
    )


def egress(cidr: str, port: int) -> networking.v1.NetworkPolicyEgressRuleArgs:
    return networking.v1.NetworkPolicyEgressRuleArgs(
        to=[networking.v1.NetworkPolicyPeerArgs(ip_block=networking.v1.IPBlockArgs(cidr=cidr))], ports=[tcp(port)]
    )
