"""Container Insights' data collection: what the cluster's monitoring agent collects and where it sends it.

The `omsagent` add-on with managed identity (`useAADAuth`) only installs the agent; what it collects comes from a data
collection rule associated with the cluster. The Azure CLI creates both client-side, an ARM or Pulumi deployment does
not, and without them the agent ingests nothing. The shape follows Microsoft's managed-identity onboarding templates.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import monitor

STREAM = "Microsoft-ContainerInsights-Group-Default"
EXTENSION = "ContainerInsights"
# The association name the agent looks for on the cluster.
ASSOCIATION = "ContainerInsightsExtension"
DESTINATION = "ciworkspace"


@dataclass(frozen=True)
class ContainerInsightsArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    workspace_id: pulumi.Input[str]
    cluster_id: pulumi.Input[str]
    tags: Mapping[str, str]


class ContainerInsights(pulumi.ComponentResource):
    rule_id: pulumi.Output[str]

    def __init__(self, name: str, args: ContainerInsightsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:ContainerInsights", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rule = monitor.DataCollectionRule(
            f"{name}-rule",
            data_collection_rule_name=f"MSCI-{args.location}-{args.name}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            kind="Linux",
            data_sources=monitor.DataCollectionRuleDataSourcesArgs(
                extensions=[
                    monitor.ExtensionDataSourceArgs(
                        name=ASSOCIATION,
                        extension_name=EXTENSION,
                        streams=[STREAM],
                        extension_settings={
                            "dataCollectionSettings": {
                                "interval": "1m",
                                "namespaceFilteringMode": "Off",
                                "enableContainerLogV2": True,
                            }
                        },
                    )
                ]
            ),
            destinations=monitor.DataCollectionRuleDestinationsArgs(
                log_analytics=[
                    monitor.LogAnalyticsDestinationArgs(name=DESTINATION, workspace_resource_id=args.workspace_id)
                ]
            ),
            data_flows=[monitor.DataFlowArgs(streams=[STREAM], destinations=[DESTINATION])],
            tags=args.tags,
            opts=child,
        )
        monitor.DataCollectionRuleAssociation(
            f"{name}-association",
            association_name=ASSOCIATION,
            resource_uri=args.cluster_id,
            data_collection_rule_id=rule.id,
            description="Container Insights: the cluster's logs and inventory to the stack's Log Analytics workspace",
            opts=child,
        )
        self.rule_id = rule.id
        self.register_outputs({"rule_id": self.rule_id})
