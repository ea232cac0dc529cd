"""The VNet every other component lives in: node, private-endpoint and PostgreSQL subnets, their NSGs, and the
private DNS zones that make private endpoints resolve from inside the VNet."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
from pulumi_azure_native import network, privatedns

# Private endpoint DNS zones, keyed by the service names the other components use.
PRIVATE_LINK_ZONES: Mapping[str, str] = {
    "blob": "privatelink.blob.core.windows.net",
    "vault": "privatelink.vaultcore.azure.net",
    "redis": "privatelink.redis.azure.net",
    "acr": "privatelink.azurecr.io",
}
POSTGRES_PORT = 5432
REDIS_PORT = 10000  # Azure Managed Redis serves TLS on 10000 only.
HTTPS_PORT = 443
STORAGE_SERVICE_ENDPOINT = "Microsoft.Storage"
NODES_SUBNET = "aks-nodes"


@dataclass(frozen=True)
class SubnetLayout:
    """The VNet split into subnets: nodes get half of it, endpoints and PostgreSQL a /24 each from the other half, and
    the API server (when VNet-integrated) a /28 from the /24 after those; None in a VNet too small for it."""

    vnet: str
    nodes: str
    endpoints: str
    postgres: str
    api_server: str | None

    @property
    def ingress_address(self) -> str:
        """A fixed address for the internal ingress load balancer: the node subnet's last, which nodes reach last."""
        return str(ipaddress.IPv4Network(self.nodes).broadcast_address - 1)

    @classmethod
    def of(cls, vnet_cidr: str) -> SubnetLayout:
        vnet = ipaddress.IPv4Network(vnet_cidr)
        nodes, rest = vnet.subnets(prefixlen_diff=1)
        twenty_fours = list(rest.subnets(new_prefix=24))
        endpoints, postgres = twenty_fours[:2]
        api_server = str(next(twenty_fours[2].subnets(new_prefix=28))) if len(twenty_fours) > 2 else None
        return cls(str(vnet), str(nodes), str(endpoints), str(postgres), api_server)


@dataclass(frozen=True)
class PrivateEndpointTarget:
    """Where a service's private endpoint goes: the endpoints subnet and the service's privatelink DNS zone."""

    subnet_id: pulumi.Input[str]
    dns_zone_id: pulumi.Input[str]


@dataclass(frozen=True)
class NetworkArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    location: str
    layout: SubnetLayout
    private_endpoints: bool
    # AKS API server VNet integration: a subnet delegated to AKS for the API server's internal load balancer.
    api_server_subnet: bool
    # Client ranges a public ingress admits on 443; empty without one.
    public_ingress_sources: Sequence[str]
    tags: Mapping[str, str]


class Network(pulumi.ComponentResource):
    vnet_id: pulumi.Output[str]
    nodes_subnet_id: pulumi.Output[str]
    nodes_subnet_name: str
    endpoints_subnet_id: pulumi.Output[str]
    postgres_subnet_id: pulumi.Output[str]
    postgres_dns_zone_id: pulumi.Output[str]
    api_server_subnet_id: pulumi.Output[str] | None
    # Empty without private endpoints: a linked privatelink zone without the service's record would shadow the
    # public name and break resolution of that service from inside the VNet.
    private_dns_zone_ids: Mapping[str, pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Network", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        rg, location, layout = args.resource_group_name, args.location, args.layout

        vnet = network.VirtualNetwork(
            f"{name}-vnet",
            virtual_network_name=f"vnet-{args.name}",
            resource_group_name=rg,
            location=location,
            address_space=network.AddressSpaceArgs(address_prefixes=[layout.vnet]),
            tags=args.tags,
            opts=child,
        )

        # AKS opens a public load balancer's ports only in the NSG of its node resource group, never in this one, which
        # Azure evaluates too: a public ingress's clients must be let in here.
        nodes_nsg = self._nsg(
            name,
            "nodes",
            args,
            [_allow_in(100, "ingress-https", list(args.public_ingress_sources), HTTPS_PORT)]
            if args.public_ingress_sources
            else [],
        )
        endpoints_nsg = self._nsg(
            name,
            "endpoints",
            args,
            [
                _allow_in(100, "vnet-https", "VirtualNetwork", HTTPS_PORT),
                _allow_in(110, "vnet-redis", "VirtualNetwork", REDIS_PORT),
                _deny_vnet_in(4096),
            ],
        )
        postgres_nsg = self._nsg(
            name,
            "postgres",
            args,
            [
                _allow_in(100, "nodes-postgres", layout.nodes, POSTGRES_PORT),
                # Zone-redundant HA replicates between primary and standby inside this subnet.
                _allow_in(110, "replication", layout.postgres, POSTGRES_PORT),
                _deny_vnet_in(4096),
            ],
        )

        # Subnets of one VNet are created one after another: Azure rejects concurrent writes to a VNet.
        nodes = network.Subnet(
            f"{name}-nodes",
            subnet_name=NODES_SUBNET,
            resource_group_name=rg,
            virtual_network_name=vnet.name,
            address_prefix=layout.nodes,
            network_security_group=network.NetworkSecurityGroupArgs(id=nodes_nsg.id),
            default_outbound_access=False,
            opts=child,
        )
        endpoints = network.Subnet(
            f"{name}-endpoints",
            subnet_name="private-endpoints",
            resource_group_name=rg,
            virtual_network_name=vnet.name,
            address_prefix=layout.endpoints,
            network_security_group=network.NetworkSecurityGroupArgs(id=endpoints_nsg.id),
            # Lets the NSG above apply to private endpoint traffic, which it otherwise bypasses.
            private_endpoint_network_policies="Enabled",
            default_outbound_access=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[nodes]),
        )
        postgres = network.Subnet(
            f"{name}-postgres",
            subnet_name="postgres",
            resource_group_name=rg,
            virtual_network_name=vnet.name,
            address_prefix=layout.postgres,
            network_security_group=network.NetworkSecurityGroupArgs(id=postgres_nsg.id),
            delegations=[
                network.DelegationArgs(name="postgres", service_name="Microsoft.DBforPostgreSQL/flexibleServers")
            ],
            # With no default outbound access, this is the path the server's WAL archiving and HA take to Storage.
            service_endpoints=[network.ServiceEndpointPropertiesFormatArgs(service=STORAGE_SERVICE_ENDPOINT)],
            default_outbound_access=False,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[endpoints]),
        )
        api_server = None
        if args.api_server_subnet:
            if layout.api_server is None:
                raise ValueError(f"{layout.vnet} has no room for the API server subnet")
            api_server = network.Subnet(
                f"{name}-api-server",
                subnet_name="aks-api-server",
                resource_group_name=rg,
                virtual_network_name=vnet.name,
                address_prefix=layout.api_server,
                # Azure's default rules let the nodes (the VNet) reach the API server's internal load balancer.
                network_security_group=network.NetworkSecurityGroupArgs(id=self._nsg(name, "api-server", args, []).id),
                delegations=[
                    network.DelegationArgs(name="aks", service_name="Microsoft.ContainerService/managedClusters")
                ],
                default_outbound_access=False,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[postgres]),
            )

        self.vnet_id = vnet.id
        self.nodes_subnet_id = nodes.id
        self.nodes_subnet_name = NODES_SUBNET
        self.endpoints_subnet_id = endpoints.id
        self.postgres_subnet_id = postgres.id
        self.api_server_subnet_id = api_server.id if api_server is not None else None
        # A VNet-integrated flexible server needs a zone ending in postgres.database.azure.com, linked to the VNet.
        postgres_zone = f"{args.name}.private.postgres.database.azure.com"
        self.postgres_dns_zone_id = self._zone(name, "postgres", postgres_zone, vnet.id, args)
        self.private_dns_zone_ids = (
            {key: self._zone(name, key, zone, vnet.id, args) for key, zone in PRIVATE_LINK_ZONES.items()}
            if args.private_endpoints
            else {}
        )
        self.register_outputs(
            {
                "vnet_id": self.vnet_id,
                "nodes_subnet_id": self.nodes_subnet_id,
                "endpoints_subnet_id": self.endpoints_subnet_id,
                "postgres_subnet_id": self.postgres_subnet_id,
                "postgres_dns_zone_id": self.postgres_dns_zone_id,
                "private_dns_zone_ids": dict(self.private_dns_zone_ids),
            }
        )

    def endpoint_target(self, service: str) -> PrivateEndpointTarget | None:
        """Where `service` (a PRIVATE_LINK_ZONES key) gets its private endpoint; None when the stack uses none."""
        if not self.private_dns_zone_ids:
            return None
        return PrivateEndpointTarget(self.endpoints_subnet_id, self.private_dns_zone_ids[service])

    def _nsg(
        self, name: str, purpose: str, args: NetworkArgs, rules: list[network.SecurityRuleArgs]
    ) -> network.NetworkSecurityGroup:
        return network.NetworkSecurityGroup(
            f"{name}-{purpose}-nsg",
            network_security_group_name=f"nsg-{args.name}-{purpose}",
            resource_group_name=args.resource_group_name,
            location=args.location,
            security_rules=rules,
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _zone(
        self, name: str, key: str, zone_name: str, vnet_id: pulumi.Input[str], args: NetworkArgs
    ) -> pulumi.Output[str]:
        zone = privatedns.PrivateZone(
            f"{name}-{key}-zone",
            private_zone_name=zone_name,
            resource_group_name=args.resource_group_name,
            location="global",
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        link = privatedns.VirtualNetworkLink(
            f"{name}-{key}-link",
            virtual_network_link_name=f"{args.name}-vnet",
            private_zone_name=zone.name,
            resource_group_name=args.resource_group_name,
            location="global",
            virtual_network=privatedns.SubResourceArgs(id=vnet_id),
            registration_enabled=False,
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        # Consumers get the zone id only once the link exists, so nothing registers into an unlinked zone.
        return pulumi.Output.all(zone.id, link.id).apply(lambda ids: ids[0])


def _allow_in(priority: int, name: str, source: str | list[str], port: int) -> network.SecurityRuleArgs:
    return network.SecurityRuleArgs(
        name=f"allow-{name}",
        priority=priority,
        direction="Inbound",
        access="Allow",
        protocol="Tcp",
        source_address_prefix=source if isinstance(source, str) else None,
        source_address_prefixes=source if isinstance(source, list) else None,
        source_port_range="*",
        destination_address_prefix="*",
        destination_port_range=str(port),
    )


def _deny_vnet_in(priority: int) -> network.SecurityRuleArgs:
    # Azure's default rules let the whole VNet in (Internet is already denied); this closes what the allow rules above
    # do not open, and leaves the platform's AzureLoadBalancer rule alone.
    return network.SecurityRuleArgs(
        name="deny-vnet-inbound",
        priority=priority,
        direction="Inbound",
        access="Deny",
        protocol="*",
        source_address_prefix="VirtualNetwork",
        source_port_range="*",
        destination_address_prefix="*",
        destination_port_range="*",
    )


def private_endpoint(
    name: str,
    *,
    resource_group_name: pulumi.Input[str],
    location: str,
    subnet_id: pulumi.Input[str],
    target_id: pulumi.Input[str],
    group_id: str,
    dns_zone_id: pulumi.Input[str],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
) -> network.PrivateEndpoint:
    """A private endpoint for `target_id` with its A record registered in `dns_zone_id` (parented to the caller)."""
    endpoint = network.PrivateEndpoint(
        f"{name}-pe",
        private_endpoint_name=f"pe-{name}",
        resource_group_name=resource_group_name,
        location=location,
        subnet=network.SubnetArgs(id=subnet_id),
        private_link_service_connections=[
            network.PrivateLinkServiceConnectionArgs(name=name, private_link_service_id=target_id, group_ids=[group_id])
        ],
        tags=tags,
        opts=pulumi.ResourceOptions(parent=parent),
    )
    network.PrivateDnsZoneGroup(
        f"{name}-pe-dns",
        private_dns_zone_group_name="default",
        private_endpoint_name=endpoint.name,
        resource_group_name=resource_group_name,
        private_dns_zone_configs=[network.PrivateDnsZoneConfigArgs(name=group_id, private_dns_zone_id=dns_zone_id)],
        opts=pulumi.ResourceOptions(parent=parent),
    )
    return endpoint
