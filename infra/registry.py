"""The container registry the cluster pulls the server image from, and the kubelet's pull permission on it.

No admin user and no anonymous pull: pushes authenticate with Entra ID (CI's OIDC identity) and the nodes pull with
the kubelet identity. Private endpoints need the Premium tier, so a private registry is always Premium.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization, containerregistry

from infra.network import PrivateEndpointTarget, private_endpoint
from infra.roles import ACR_PULL, role_definition_id

SERVER_REPOSITORY = "ggufstack-server"


@dataclass(frozen=True)
class RegistryArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    subscription_id: pulumi.Input[str]
    kubelet_object_id: pulumi.Input[str]
    # None gives a Standard registry on its public endpoint (Entra ID auth still required).
    private_endpoint: PrivateEndpointTarget | None
    tags: Mapping[str, str]


class Registry(pulumi.ComponentResource):
    registry_id: pulumi.Output[str]
    registry_name: pulumi.Output[str]
    login_server: pulumi.Output[str]

    def __init__(self, name: str, args: RegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Registry", name, None, opts)
        private = args.private_endpoint is not None
        registry = containerregistry.Registry(
            # Registry names are global and alphanumeric; Pulumi appends 8 random characters to this.
            f"acr{args.name.replace('-', '')}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=containerregistry.SkuArgs(name="Premium" if private else "Standard"),
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            public_network_access="Disabled" if private else "Enabled",
            # Lets trusted Azure services (e.g. `az acr import` promoting an image from the dev registry) through.
            network_rule_bypass_options="AzureServices",
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        if args.private_endpoint is not None:
            private_endpoint(
                f"{name}-acr",
                resource_group_name=args.resource_group_name,
                location=args.location,
                subnet_id=args.private_endpoint.subnet_id,
                target_id=registry.id,
                group_id="registry",
                dns_zone_id=args.private_endpoint.dns_zone_id,
                tags=args.tags,
                parent=self,
            )
        pull = authorization.RoleAssignment(
            f"{name}-kubelet-acr-pull",
            scope=registry.id,
            role_definition_id=role_definition_id(args.subscription_id, ACR_PULL),
            principal_id=args.kubelet_object_id,
            principal_type="ServicePrincipal",
            description="AKS kubelet pulls the server image",
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.registry_id = registry.id
        self.registry_name = registry.name
        # Resolves once the kubelet may pull, so whatever deploys an image from here waits for that permission.
        self.login_server = pulumi.Output.all(registry.login_server, pull.id).apply(lambda parts: parts[0])
        self.register_outputs(
            {"registry_id": self.registry_id, "registry_name": self.registry_name, "login_server": self.login_server}
        )
