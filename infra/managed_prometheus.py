"""Azure Monitor managed Prometheus for the server's metrics, the first alerts on them, and Grafana to read them.

The AKS metrics add-on (`azureMonitorProfile`, in infra/cluster.py) runs the scraping agents; this component gives
them somewhere to write (an Azure Monitor workspace, through a data collection endpoint and rule associated with the
cluster), declares the alert rules as Prometheus rule groups on that workspace, and links an Azure Managed Grafana to
it. What the agents scrape is the server's PodMonitor (infra/workload.py); the PromQL is infra/server_metrics.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import alertsmanagement, authorization, dashboard, monitor

from infra.roles import GRAFANA_ADMIN, MONITORING_DATA_READER, role_definition_id
from infra.server_metrics import alert_rules

STREAM = "Microsoft-PrometheusMetrics"
DESTINATION = "MonitoringAccount1"
ASSOCIATION = "ContainerInsightsMetricsExtension"
# The association name the metrics agent uses to find its configuration endpoint.
ENDPOINT_ASSOCIATION = "configurationAccessEndpoint"


@dataclass(frozen=True)
class ManagedPrometheusArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    subscription_id: pulumi.Input[str]
    cluster_id: pulumi.Input[str]
    cluster_name: pulumi.Input[str]
    # Identities that query the workspace (KEDA's scaler), by purpose; each gets Monitoring Data Reader on it.
    reader_principal_ids: Mapping[str, pulumi.Input[str]]
    # Grafana Admin on the Grafana instance; None leaves it to whoever is given the role by hand.
    admin_group_object_id: str | None
    alert_email: str | None
    zone_redundant: bool
    tags: Mapping[str, str]


class ManagedPrometheus(pulumi.ComponentResource):
    workspace_id: pulumi.Output[str]
    query_endpoint: pulumi.Output[str]
    grafana_name: pulumi.Output[str]
    grafana_endpoint: pulumi.Output[str]

    def __init__(self, name: str, args: ManagedPrometheusArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:ManagedPrometheus", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg, location = args.resource_group_name, args.location
        workspace = monitor.AzureMonitorWorkspace(
            f"{name}-workspace",
            azure_monitor_workspace_name=f"amw-{args.name}",
            resource_group_name=rg,
            location=location,
            tags=args.tags,
            opts=child,
        )
        endpoint = monitor.DataCollectionEndpoint(
            f"{name}-endpoint",
            data_collection_endpoint_name=f"MSProm-{location}-{args.name}",
            resource_group_name=rg,
            location=location,
            kind="Linux",
            tags=args.tags,
            opts=child,
        )
        rule = monitor.DataCollectionRule(
            f"{name}-rule",
            data_collection_rule_name=f"MSProm-{location}-{args.name}",
            resource_group_name=rg,
            location=location,
            kind="Linux",
            data_collection_endpoint_id=endpoint.id,
            data_sources=monitor.DataCollectionRuleDataSourcesArgs(
                prometheus_forwarder=[
                    monitor.PrometheusForwarderDataSourceArgs(
                        name="PrometheusDataSource", streams=[STREAM], label_include_filter={}
                    )
                ]
            ),
            destinations=monitor.DataCollectionRuleDestinationsArgs(
                monitoring_accounts=[
                    monitor.MonitoringAccountDestinationArgs(name=DESTINATION, account_resource_id=workspace.id)
                ]
            ),
            data_flows=[monitor.DataFlowArgs(streams=[STREAM], destinations=[DESTINATION])],
            tags=args.tags,
            opts=child,
        )
        monitor.DataCollectionRuleAssociation(
            f"{name}-endpoint-association",
            association_name=ENDPOINT_ASSOCIATION,
            resource_uri=args.cluster_id,
            data_collection_endpoint_id=endpoint.id,
            opts=child,
        )
        monitor.DataCollectionRuleAssociation(
            f"{name}-rule-association",
            association_name=ASSOCIATION,
            resource_uri=args.cluster_id,
            data_collection_rule_id=rule.id,
            description="Managed Prometheus: the cluster's scraped metrics to the Azure Monitor workspace",
            opts=child,
        )

        actions = []
        if args.alert_email is not None:
            group = monitor.ActionGroup(
                f"{name}-alerts",
                action_group_name=f"ag-{args.name}",
                group_short_name="ggufstack",
                resource_group_name=rg,
                location="global",
                enabled=True,
                email_receivers=[
                    monitor.EmailReceiverArgs(
                        name="operators", email_address=args.alert_email, use_common_alert_schema=True
                    )
                ],
                tags=args.tags,
                opts=child,
            )
            actions = [alertsmanagement.PrometheusRuleGroupActionArgs(action_group_id=group.id)]
        alertsmanagement.PrometheusRuleGroup(
            f"{name}-server-alerts",
            rule_group_name=f"ggufstack-server-{args.name}",
            resource_group_name=rg,
            location=location,
            scopes=[workspace.id, args.cluster_id],
            cluster_name=args.cluster_name,
            interval="PT1M",
            enabled=True,
            description="The server's first alerts: not ready, 5xx rate, queue saturation, p95 time to first token",
            rules=[
                alertsmanagement.PrometheusRuleArgs(
                    alert=rule.name,
                    expression=rule.expression,
                    for_=f"PT{rule.for_minutes}M",
                    severity=rule.severity,
                    enabled=True,
                    annotations={"summary": rule.summary},
                    resolve_configuration=alertsmanagement.PrometheusRuleResolveConfigurationArgs(
                        auto_resolved=True, time_to_resolve="PT10M"
                    ),
                    actions=actions,
                )
                for rule in alert_rules()
            ],
            tags=args.tags,
            opts=child,
        )

        grafana = dashboard.Grafana(
            f"{name}-grafana",
            workspace_name=f"amg-{args.name}"[:23],
            resource_group_name=rg,
            location=location,
            sku=dashboard.ResourceSkuArgs(name="Standard"),
            identity=dashboard.ManagedServiceIdentityArgs(type="SystemAssigned"),
            properties=dashboard.ManagedGrafanaPropertiesArgs(
                grafana_integrations=dashboard.GrafanaIntegrationsArgs(
                    azure_monitor_workspace_integrations=[
                        dashboard.AzureMonitorWorkspaceIntegrationArgs(azure_monitor_workspace_resource_id=workspace.id)
                    ]
                ),
                # Entra ID sign-in only: no service account API keys.
                api_key="Disabled",
                deterministic_outbound_ip="Disabled",
                public_network_access="Enabled",
                zone_redundancy="Enabled" if args.zone_redundant else "Disabled",
            ),
            tags=args.tags,
            opts=child,
        )
        readers = {"grafana": grafana.identity.apply(lambda i: i.principal_id), **args.reader_principal_ids}
        for purpose, principal in readers.items():
            authorization.RoleAssignment(
                f"{name}-{purpose}-data-reader",
                scope=workspace.id,
                role_definition_id=role_definition_id(args.subscription_id, MONITORING_DATA_READER),
                principal_id=principal,
                principal_type="ServicePrincipal",
                opts=child,
            )
        if args.admin_group_object_id is not None:
            authorization.RoleAssignment(
                f"{name}-grafana-admins",
                scope=grafana.id,
                role_definition_id=role_definition_id(args.subscription_id, GRAFANA_ADMIN),
                principal_id=args.admin_group_object_id,
                principal_type="Group",
                opts=child,
            )

        self.workspace_id = workspace.id
        self.query_endpoint = workspace.metrics.apply(lambda m: m.prometheus_query_endpoint)
        self.grafana_name = grafana.name
        self.grafana_endpoint = grafana.properties.apply(lambda p: p.endpoint)
        self.register_outputs(
            {
                "workspace_id": self.workspace_id,
                "query_endpoint": self.query_endpoint,
                "grafana_name": self.grafana_name,
                "grafana_endpoint": self.grafana_endpoint,
            }
        )
