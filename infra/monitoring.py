"""Log Analytics, and the diagnostic settings that send the data services', the registry's and the cluster's logs to
it.

They are two components because the workspace must exist before the cluster (Container Insights writes to it) while
the diagnostic settings need the cluster, the vault, the storage account and the database to exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import monitor, operationalinsights


@dataclass(frozen=True)
class MonitoringArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    retention_days: int
    tags: Mapping[str, str]


class Monitoring(pulumi.ComponentResource):
    workspace_id: pulumi.Output[str]

    def __init__(self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Monitoring", name, None, opts)
        workspace = operationalinsights.Workspace(
            f"{name}-logs",
            workspace_name=f"log-{args.name}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
            retention_in_days=args.retention_days,
            # Readers need Azure RBAC on the resources whose logs they query, not just workspace access.
            features=operationalinsights.WorkspaceFeaturesArgs(enable_log_access_using_only_resource_permissions=True),
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.workspace_id = workspace.id
        self.register_outputs({"workspace_id": self.workspace_id})


@dataclass(frozen=True)
class DiagnosticsArgs:
    workspace_id: pulumi.Input[str]
    key_vault_id: pulumi.Input[str]
    storage_account_id: pulumi.Input[str]
    postgres_server_id: pulumi.Input[str]
    redis_database_id: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    cluster_id: pulumi.Input[str]


# Control-plane logs worth their ingestion cost: who changed what (audit-admin, guard) and why nodes came and went.
AKS_LOG_CATEGORIES = ("kube-audit-admin", "guard", "cluster-autoscaler", "kube-controller-manager")


class Diagnostics(pulumi.ComponentResource):
    def __init__(self, name: str, args: DiagnosticsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Diagnostics", name, None, opts)
        blob_service_id = pulumi.Output.concat(args.storage_account_id, "/blobServices/default")
        self._setting(name, "vault", args.key_vault_id, args.workspace_id, groups=["audit"])
        # Blob logs record every read of a model and every overwrite of one: the audit trail for rollbacks.
        self._setting(name, "blob", blob_service_id, args.workspace_id, groups=["allLogs"], metrics="Transaction")
        self._setting(name, "postgres", args.postgres_server_id, args.workspace_id, groups=["allLogs"])
        self._setting(name, "aks", args.cluster_id, args.workspace_id, categories=AKS_LOG_CATEGORIES)
        # Who connected to Redis and from where (the database is where Azure Managed Redis keeps connection events).
        self._setting(name, "redis", args.redis_database_id, args.workspace_id, groups=["allLogs"], metrics=None)
        # Logins and pushes/pulls of the registry: who deployed which image.
        self._setting(name, "acr", args.registry_id, args.workspace_id, groups=["allLogs"])
        self.register_outputs({})

    def _setting(
        self,
        name: str,
        target: str,
        resource_uri: pulumi.Input[str],
        workspace_id: pulumi.Input[str],
        *,
        groups: Sequence[str] = (),
        categories: Sequence[str] = (),
        metrics: str | None = "AllMetrics",
    ) -> None:
        monitor.DiagnosticSetting(
            f"{name}-{target}",
            name=f"to-log-analytics-{target}",
            resource_uri=resource_uri,
            workspace_id=workspace_id,
            # Resource-specific tables rather than the shared AzureDiagnostics table, which caps columns.
            log_analytics_destination_type="Dedicated",
            logs=[monitor.DiagnosticsLogSettingsArgs(category_group=g, enabled=True) for g in groups]
            + [monitor.DiagnosticsLogSettingsArgs(category=c, enabled=True) for c in categories],
            metrics=[monitor.DiagnosticsMetricSettingsArgs(category=metrics, enabled=True)] if metrics else None,
            opts=pulumi.ResourceOptions(parent=self),
        )
