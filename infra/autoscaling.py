"""Scale the server on its own load, not on CPU: KEDA (the AKS add-on) queries the server's metrics in the Azure
Monitor workspace and drives the replica count between the configured bounds.

A GPU-bound server's CPU does not track its load, but the generations waiting for a slot and the slots decoding do
(infra/server_metrics.py builds the query from the metric names the server exports). KEDA's operator authenticates to
the workspace with its workload identity (infra/identities.py federates it; infra/managed_prometheus.py lets it read).
Scaling down waits long: a replica that leaves costs a GPU node and a model download when load returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes import meta

from infra.server_metrics import scale_query

KEDA_API = "keda.sh/v1alpha1"
SCALE_DOWN_STABILIZATION_SECONDS = 1800
SCALE_UP_STABILIZATION_SECONDS = 60
POLLING_SECONDS = 30
LABELS = {"app.kubernetes.io/part-of": "ggufstack", "app.kubernetes.io/managed-by": "pulumi"}


@dataclass(frozen=True)
class AutoscalingArgs:
    provider: k8s.Provider
    depends_on: Sequence[pulumi.Resource]
    namespace: str
    deployment: str
    min_replicas: int
    max_replicas: int
    # Generations (waiting or decoding) one replica should carry before another is added.
    target_per_replica: int
    query_endpoint: pulumi.Input[str]
    keda_client_id: pulumi.Input[str]


class Autoscaling(pulumi.ComponentResource):
    def __init__(self, name: str, args: AutoscalingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Autoscaling", name, None, opts)
        on_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        auth_name = f"{args.deployment}-azure-monitor"
        auth = k8s.apiextensions.CustomResource(
            f"{name}-trigger-auth",
            api_version=KEDA_API,
            kind="TriggerAuthentication",
            metadata=meta.v1.ObjectMetaArgs(name=auth_name, namespace=args.namespace, labels=LABELS),
            spec={"podIdentity": {"provider": "azure-workload", "identityId": args.keda_client_id}},
            opts=on_cluster,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-scaled-object",
            api_version=KEDA_API,
            kind="ScaledObject",
            metadata=meta.v1.ObjectMetaArgs(name=args.deployment, namespace=args.namespace, labels=LABELS),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": args.deployment},
                "minReplicaCount": args.min_replicas,
                "maxReplicaCount": args.max_replicas,
                "pollingInterval": POLLING_SECONDS,
                "advanced": {
                    "horizontalPodAutoscalerConfig": {
                        "behavior": {
                            "scaleDown": {
                                "stabilizationWindowSeconds": SCALE_DOWN_STABILIZATION_SECONDS,
                                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                            },
                            "scaleUp": {
                                "stabilizationWindowSeconds": SCALE_UP_STABILIZATION_SECONDS,
                                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                            },
                        }
                    }
                },
                "triggers": [
                    {
                        "type": "prometheus",
                        "metadata": {
                            "serverAddress": args.query_endpoint,
                            "query": scale_query(),
                            "threshold": str(args.target_per_replica),
                            # Without data (no replica reporting yet) hold the minimum rather than fail the scaler.
                            "ignoreNullValues": "true",
                        },
                        "authenticationRef": {"name": auth_name},
                    }
                ],
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[auth, *args.depends_on]),
        )
        self.register_outputs({})
