"""Application Insights for the server's OpenTelemetry traces, on the stack's Log Analytics workspace.

The connection string reaches the pod like every other secret: it is stored in Key Vault and mounted as a file named
after the server setting (`APPLICATIONINSIGHTS_CONNECTION_STRING`), never put in the pod's environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import applicationinsights

from infra.vault import store_secret
from server.config.settings import KEY_VAULT_SECRETS


@dataclass(frozen=True)
class AppInsightsArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    workspace_id: pulumi.Input[str]
    vault_name: pulumi.Input[str]
    tags: Mapping[str, str]


class AppInsights(pulumi.ComponentResource):
    component_id: pulumi.Output[str]

    def __init__(self, name: str, args: AppInsightsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:AppInsights", name, None, opts)
        component = applicationinsights.Component(
            f"{name}-component",
            resource_name_=f"appi-{args.name}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="web",
            application_type="web",
            # Workspace-based: traces land in the stack's Log Analytics workspace beside the cluster's logs.
            workspace_resource_id=args.workspace_id,
            ingestion_mode="LogAnalytics",
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        store_secret(
            f"{name}-connection-string-secret",
            secret_name=KEY_VAULT_SECRETS["applicationinsights_connection_string"],
            value=component.connection_string,
            vault_name=args.vault_name,
            resource_group_name=args.resource_group_name,
            parent=self,
        )
        self.component_id = component.id
        self.register_outputs({"component_id": self.component_id})
