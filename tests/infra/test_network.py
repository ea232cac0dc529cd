"""VNet, subnets, NSGs and private DNS; and the monitoring that observes the rest."""

from __future__ import annotations

import ipaddress

import pytest

from infra.monitoring import AKS_LOG_CATEGORIES
from infra.network import SubnetLayout
from tests.infra.harness import StackRun

PRIVATE_LINK_ZONES = {
    "privatelink.blob.core.windows.net",
    "privatelink.vaultcore.azure.net",
    "privatelink.redis.azure.net",
    "privatelink.azurecr.io",
}


def _subnets(stack: StackRun) -> dict[str, dict]:
    return {r.plain["subnetName"]: r for r in stack.of_type("azure-native:network:Subnet")}


def test_vnet_spans_the_configured_range_and_contains_every_subnet(stack: StackRun) -> None:
    vnet = stack.one("azure-native:network:VirtualNetwork").plain
    assert vnet["addressSpace"]["addressPrefixes"] == [stack.cfg.vnet_cidr]
    network = ipaddress.IPv4Network(stack.cfg.vnet_cidr)
    subnets = [ipaddress.IPv4Network(r.plain["addressPrefix"]) for r in _subnets(stack).values()]
    assert all(s.subnet_of(network) for s in subnets)
    assert not any(a.overlaps(b) for i, a in enumerate(subnets) for b in subnets[i + 1 :])


def test_subnets_for_nodes_endpoints_and_a_delegated_postgres(stack: StackRun) -> None:
    layout = SubnetLayout.of(stack.cfg.vnet_cidr)
    subnets = _subnets(stack)
    assert {name: r.plain["addressPrefix"] for name, r in subnets.items()} == {
        "aks-nodes": layout.nodes,
        "private-endpoints": layout.endpoints,
        "postgres": layout.postgres,
        **({"aks-api-server": layout.api_server} if stack.cfg.api_server_access != "public" else {}),
    }
    assert subnets["postgres"].plain["delegations"] == [
        {"name": "postgres", "serviceName": "Microsoft.DBforPostgreSQL/flexibleServers"}
    ]
    assert subnets["private-endpoints"].plain["privateEndpointNetworkPolicies"] == "Enabled"
    for r in subnets.values():
        assert r.plain["defaultOutboundAccess"] is False, "no implicit internet egress from any subnet"


def test_subnets_are_created_one_after_another(stack: StackRun) -> None:
    subnets = _subnets(stack)
    assert subnets["aks-nodes"].urn in subnets["private-endpoints"].dependencies
    assert subnets["private-endpoints"].urn in subnets["postgres"].dependencies


def test_every_subnet_has_its_own_nsg(stack: StackRun) -> None:
    nsgs = [r.id for r in stack.of_type("azure-native:network:NetworkSecurityGroup")]
    attached = [r.plain["networkSecurityGroup"]["id"] for r in _subnets(stack).values()]
    assert sorted(attached) == sorted(nsgs)


def test_nsgs_admit_only_the_service_ports_from_the_vnet(stack: StackRun) -> None:
    layout = SubnetLayout.of(stack.cfg.vnet_cidr)
    rules = {
        r.plain["networkSecurityGroupName"]: {rule["name"]: rule for rule in r.plain["securityRules"]}
        for r in stack.of_type("azure-native:network:NetworkSecurityGroup")
    }
    postgres = rules[f"nsg-{stack.name}-postgres"]
    assert postgres["allow-nodes-postgres"]["sourceAddressPrefix"] == layout.nodes
    assert postgres["allow-nodes-postgres"]["destinationPortRange"] == "5432"
    endpoints = rules[f"nsg-{stack.name}-endpoints"]
    assert {rule["destinationPortRange"] for rule in endpoints.values() if rule["access"] == "Allow"} == {
        "443",
        "10000",
    }
    for nsg in (postgres, endpoints):
        deny = nsg["deny-vnet-inbound"]
        assert (deny["access"], deny["sourceAddressPrefix"], deny["destinationPortRange"]) == (
            "Deny",
            "VirtualNetwork",
            "*",
        )
        assert deny["priority"] > max(rule["priority"] for rule in nsg.values() if rule["access"] == "Allow")


def test_private_dns_zones_are_linked_to_the_vnet(stack: StackRun) -> None:
    vnet_id = stack.one("azure-native:network:VirtualNetwork").id
    zones = {r.plain["privateZoneName"] for r in stack.of_type("azure-native:privatedns:PrivateZone")}
    links = stack.of_type("azure-native:privatedns:VirtualNetworkLink")
    assert {link.plain["privateZoneName"] for link in links} == zones
    for link in links:
        assert link.plain["virtualNetwork"]["id"] == vnet_id
        assert link.plain["registrationEnabled"] is False
    assert f"{stack.name}.private.postgres.database.azure.com" in zones


def test_prod_has_a_privatelink_zone_for_every_private_endpoint(prod: StackRun) -> None:
    zones = {r.plain["privateZoneName"] for r in prod.of_type("azure-native:privatedns:PrivateZone")}
    assert zones == PRIVATE_LINK_ZONES | {
        f"{prod.name}.private.postgres.database.azure.com",
        prod.cfg.ingress_host_name,
    }


def test_dev_links_no_privatelink_zone_that_would_shadow_public_endpoints(dev: StackRun) -> None:
    zones = {r.plain["privateZoneName"] for r in dev.of_type("azure-native:privatedns:PrivateZone")}
    assert zones == {f"{dev.name}.private.postgres.database.azure.com"}
    assert not dev.of_type("azure-native:network:PrivateEndpoint")


@pytest.mark.parametrize(
    ("service", "group_id", "zone"),
    [
        ("azure-native:storage:StorageAccount", "blob", "privatelink.blob.core.windows.net"),
        ("azure-native:keyvault:Vault", "vault", "privatelink.vaultcore.azure.net"),
        ("azure-native:redisenterprise:RedisEnterprise", "redisEnterprise", "privatelink.redis.azure.net"),
        ("azure-native:containerregistry:Registry", "registry", "privatelink.azurecr.io"),
    ],
)
def test_prod_data_services_have_private_endpoints_registered_in_their_zone(
    prod: StackRun, service: str, group_id: str, zone: str
) -> None:
    target = prod.one(service)
    endpoints_subnet = _subnets(prod)["private-endpoints"].id
    (endpoint,) = [
        r
        for r in prod.of_type("azure-native:network:PrivateEndpoint")
        if r.plain["privateLinkServiceConnections"][0]["privateLinkServiceId"] == target.id
    ]
    assert endpoint.plain["subnet"]["id"] == endpoints_subnet
    assert endpoint.plain["privateLinkServiceConnections"][0]["groupIds"] == [group_id]
    assert endpoint.parent == target.parent, "the endpoint belongs to the service's component"
    zone_id = next(
        r.id for r in prod.of_type("azure-native:privatedns:PrivateZone") if r.plain["privateZoneName"] == zone
    )
    (group,) = [
        r
        for r in prod.of_type("azure-native:network:PrivateDnsZoneGroup")
        if r.plain["privateEndpointName"] == endpoint.state["name"]
    ]
    assert group.plain["privateDnsZoneConfigs"] == [{"name": group_id, "privateDnsZoneId": zone_id}]


def test_log_analytics_keeps_logs_for_the_configured_retention(stack: StackRun) -> None:
    workspace = stack.one("azure-native:operationalinsights:Workspace").plain
    assert workspace["retentionInDays"] == stack.cfg.log_retention_days
    assert workspace["features"]["enableLogAccessUsingOnlyResourcePermissions"] is True


def test_diagnostics_send_every_data_service_registry_and_aks_logs_to_the_workspace(stack: StackRun) -> None:
    workspace = stack.one("azure-native:operationalinsights:Workspace").id
    settings = {r.plain["resourceUri"]: r.plain for r in stack.of_type("azure-native:monitor:DiagnosticSetting")}
    targets = {
        stack.one("azure-native:keyvault:Vault").id: {"audit"},
        stack.one("azure-native:storage:StorageAccount").id + "/blobServices/default": {"allLogs"},
        stack.one("azure-native:dbforpostgresql:Server").id: {"allLogs"},
        stack.managed_cluster().id: set(AKS_LOG_CATEGORIES),
        stack.one("azure-native:redisenterprise:Database").id: {"allLogs"},
        stack.one("azure-native:containerregistry:Registry").id: {"allLogs"},
    }
    assert set(settings) == set(targets)
    for uri, logs in targets.items():
        setting = settings[uri]
        assert setting["workspaceId"] == workspace
        assert {log.get("categoryGroup") or log.get("category") for log in setting["logs"]} == logs
        assert all(log["enabled"] for log in setting["logs"] + setting.get("metrics", []))


def test_postgres_subnet_reaches_storage_through_a_service_endpoint(stack: StackRun) -> None:
    # The subnet has no default outbound access; WAL archiving and HA reach Storage through this endpoint.
    postgres = _subnets(stack)["postgres"].plain
    assert postgres["defaultOutboundAccess"] is False
    assert postgres["serviceEndpoints"] == [{"service": "Microsoft.Storage"}]


def test_nodes_egress_through_the_cluster_load_balancer(stack: StackRun) -> None:
    # The node subnet has no default outbound access either: AKS's load balancer outbound rules are its egress.
    profile = stack.managed_cluster().plain["networkProfile"]
    assert (profile["outboundType"], profile["loadBalancerSku"]) == ("loadBalancer", "standard")


def test_prod_api_server_is_vnet_integrated_in_its_delegated_subnet(prod: StackRun) -> None:
    subnet = _subnets(prod)["aks-api-server"]
    profile = prod.managed_cluster().plain["apiServerAccessProfile"]
    assert subnet.plain["delegations"] == [{"name": "aks", "serviceName": "Microsoft.ContainerService/managedClusters"}]
    assert (profile["enableVnetIntegration"], profile["subnetId"]) == (True, subnet.id)
    assert ipaddress.IPv4Network(subnet.plain["addressPrefix"]).prefixlen == 28


def test_a_public_ingress_is_let_through_the_nodes_subnet_nsg_from_its_source_ranges_only(stack: StackRun) -> None:
    """AKS writes a public load balancer's rules only into the NSG of its node resource group; an NSG on the nodes'
    own subnet is evaluated as well and AKS leaves it alone ("Network concepts for applications in AKS", Network
    security groups, https://learn.microsoft.com/azure/aks/concepts-network), so without a rule there Internet
    traffic to dev's public gateway was dropped."""
    (nodes,) = [
        r.plain
        for r in stack.of_type("azure-native:network:NetworkSecurityGroup")
        if r.plain["networkSecurityGroupName"] == f"nsg-{stack.name}-nodes"
    ]
    allowed = [rule for rule in nodes.get("securityRules", []) if rule["access"] == "Allow"]
    if stack.cfg.ingress_exposure == "public" and stack.cfg.ingress_host_name:
        (rule,) = allowed
        assert (rule["direction"], rule["protocol"], rule["destinationPortRange"]) == ("Inbound", "Tcp", "443")
        assert rule["sourceAddressPrefixes"] == stack.cfg.ingress_source_ranges
        assert "sourceAddressPrefix" not in rule
    else:
        assert allowed == []
