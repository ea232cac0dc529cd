"""The server's edge: the Gateway API ingress with TLS from Key Vault, and KEDA scaling on the server's own load.

The Gateway API and KEDA objects are custom resources kubernetes-validate has no schema for; like the
SecretProviderClass, their fields are asserted here one by one, including that no unexpected field is present.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra.autoscaling import SCALE_DOWN_STABILIZATION_SECONDS
from infra.server_metrics import scale_query
from server.api.gates import AdminKeyFirstRoute, KeyFirstRoute
from tests.infra.harness import StackRun
from tests.support.routes import server_routes


def _object(stack: StackRun, kind: str) -> dict[str, Any]:
    (obj,) = [o for _, o in stack.kubernetes_objects() if o["kind"] == kind]
    return obj


def _named(stack: StackRun, kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for _, o in stack.kubernetes_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def test_scaled_object_drives_the_deployment_within_the_configured_bounds(stack: StackRun) -> None:
    scaled = _object(stack, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) == {
        "scaleTargetRef",
        "minReplicaCount",
        "maxReplicaCount",
        "pollingInterval",
        "advanced",
        "triggers",
    }
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ggufstack-server"}
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (
        stack.cfg.server_replicas,
        stack.cfg.server_max_replicas,
    )
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] == SCALE_DOWN_STABILIZATION_SECONDS >= 1200


def test_scaler_queries_the_workspace_for_the_servers_load_with_workload_identity(stack: StackRun) -> None:
    (trigger,) = _object(stack, "ScaledObject")["spec"]["triggers"]
    workspace = stack.one("azure-native:monitor:AzureMonitorWorkspace").outputs
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["serverAddress"] == workspace["metrics"]["prometheusQueryEndpoint"]
    assert trigger["metadata"]["query"] == scale_query()
    assert trigger["metadata"]["threshold"] == str(stack.cfg.scale_waiting_per_replica)
    auth = _object(stack, "TriggerAuthentication")
    keda = next(
        r.outputs
        for r in stack.of_type("azure-native:managedidentity:UserAssignedIdentity")
        if r.plain["resourceName"].endswith("-keda")
    )
    assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"]}
    assert auth["spec"] == {"podIdentity": {"provider": "azure-workload", "identityId": keda["clientId"]}}


def test_no_cpu_autoscaler_is_left_to_fight_keda(stack: StackRun) -> None:
    assert not [o for _, o in stack.kubernetes_objects() if o["kind"] == "HorizontalPodAutoscaler"]


def test_gateway_terminates_tls_for_the_host_with_the_key_vault_certificate(stack: StackRun) -> None:
    gateway = _object(stack, "Gateway")
    assert gateway["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert gateway["metadata"]["namespace"] == "ggufstack-ingress"
    assert set(gateway["spec"]) == {"gatewayClassName", "infrastructure", "listeners"}
    assert gateway["spec"]["gatewayClassName"] == "approuting-istio"
    (listener,) = gateway["spec"]["listeners"]
    assert set(listener) == {"name", "protocol", "port", "hostname", "tls", "allowedRoutes"}
    assert (listener["protocol"], listener["port"], listener["hostname"]) == (
        "HTTPS",
        443,
        stack.cfg.ingress_host_name,
    )
    # The TLS secret lives next to the Gateway, so no ReferenceGrant is needed.
    assert listener["tls"] == {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "ggufstack-tls"}]}
    assert not [o for _, o in stack.kubernetes_objects() if o["kind"] == "ReferenceGrant"]


def test_the_certificate_has_its_own_secret_provider_class_and_sync_pod_in_the_gateways_namespace(
    stack: StackRun,
) -> None:
    """The Secrets Store CSI driver fails a whole mount when one object is missing, so the server, whose
    SecretProviderClass also held the hand-imported certificate, stayed in ContainerCreating until someone imported
    it. Microsoft's pattern ("Set up Secrets Store CSI Driver to enable NGINX Ingress Controller with TLS",
    https://learn.microsoft.com/azure/aks/csi-secrets-store-nginx-tls): a SecretProviderClass for the certificate
    and a pod mounting it in the ingress's namespace, which the driver's secretObjects sync into a TLS secret."""
    vault = stack.one("azure-native:keyvault:Vault").outputs["name"]
    reader = next(
        r
        for r in stack.of_type("azure-native:managedidentity:UserAssignedIdentity")
        if r.plain["resourceName"] == f"id-{stack.name}-tls"
    )
    provider_class = _named(stack, "SecretProviderClass", "ggufstack-tls")
    assert provider_class["metadata"]["namespace"] == "ggufstack-ingress"
    parameters = provider_class["spec"]["parameters"]
    assert (parameters["keyvaultName"], parameters["clientID"]) == (vault, reader.outputs["clientId"])
    objects = [json.loads(o) for o in json.loads(parameters["objects"])["array"]]
    assert objects == [{"objectName": stack.cfg.ingress_certificate_name, "objectType": "secret"}]
    (synced,) = provider_class["spec"]["secretObjects"]
    assert synced == {
        "secretName": "ggufstack-tls",
        "type": "kubernetes.io/tls",
        "data": [
            {"objectName": stack.cfg.ingress_certificate_name, "key": "tls.key"},
            {"objectName": stack.cfg.ingress_certificate_name, "key": "tls.crt"},
        ],
    }
    sync = _named(stack, "Deployment", "certificate-sync")
    assert sync["metadata"]["namespace"] == "ggufstack-ingress"
    assert sync["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
    pod = sync["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "certificate-sync"
    assert [v["csi"]["volumeAttributes"] for v in pod["volumes"]] == [{"secretProviderClass": "ggufstack-tls"}]
    account = _named(stack, "ServiceAccount", "certificate-sync")
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == reader.outputs["clientId"]
    (federation,) = [
        r.plain
        for r in stack.of_type("azure-native:managedidentity:FederatedIdentityCredential")
        if r.plain["resourceName"] == reader.outputs["name"]
    ]
    assert federation["subject"] == "system:serviceaccount:ggufstack-ingress:certificate-sync"


def test_route_streams_to_the_service_with_long_timeouts(stack: StackRun) -> None:
    route = _object(stack, "HTTPRoute")
    assert route["metadata"]["namespace"] == "ggufstack"
    assert set(route["spec"]) == {"parentRefs", "hostnames", "rules"}
    (parent,) = route["spec"]["parentRefs"]
    assert (parent["name"], parent["namespace"], parent["sectionName"]) == ("ggufstack", "ggufstack-ingress", "https")
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [{"name": "ggufstack-server", "port": 80}]
    # A long generation streams for minutes; Gateway API durations are plain seconds here.
    assert int(rule["timeouts"]["request"].removesuffix("s")) >= 1800
    assert rule["timeouts"]["backendRequest"] == rule["timeouts"]["request"]


def _gateway_matches(matches: list[dict[str, Any]], path: str) -> bool:
    """The Gateway API's path match: a PathPrefix matches whole path elements ("/v1" matches "/v1/models", not
    "/v1x"); an Exact match, the path itself (https://gateway-api.sigs.k8s.io/api-types/httproute/, "Path")."""
    for match in matches:
        kind, value = match["path"]["type"], match["path"]["value"]
        if kind == "Exact" and path == value:
            return True
        if kind == "PathPrefix" and (path == value or path.startswith(value.rstrip("/") + "/")):
            return True
    return False


def test_gateway_match_follows_path_elements() -> None:
    matches = [{"path": {"type": "PathPrefix", "value": "/v1"}}, {"path": {"type": "Exact", "value": "/tokenize"}}]
    assert _gateway_matches(matches, "/v1") and _gateway_matches(matches, "/v1/chat/completions")
    assert not _gateway_matches(matches, "/v1x") and not _gateway_matches(matches, "/tokenize/x")


def test_route_carries_every_client_api_and_not_the_admin_api_or_the_probes(stack: StackRun) -> None:
    # Every client behind the gateway reaches the server from the gateway's address, and wrong admin keys are counted
    # per address: with /admin on the route, any client could lock the admin API for all. Operators port-forward.
    (rule,) = _object(stack, "HTTPRoute")["spec"]["rules"]
    routes = server_routes()
    client = {route.path for route in routes if isinstance(route, KeyFirstRoute)}
    internal = {route.path for route in routes if not isinstance(route, KeyFirstRoute)}
    assert {"/v1/chat/completions", "/v1/messages", "/v1/responses", "/v1/embeddings", "/tokenize"} <= client
    assert {"/admin/keys", "/health/ready", "/metrics"} <= internal
    assert any(isinstance(route, AdminKeyFirstRoute) for route in routes)
    assert [path for path in sorted(client) if not _gateway_matches(rule["matches"], path)] == []
    assert [path for path in sorted(internal) if _gateway_matches(rule["matches"], path)] == []
    for path in ("/docs", "/openapi.json", "/admin", "/"):
        assert not _gateway_matches(rule["matches"], path)


def test_prod_ingress_is_internal_at_a_fixed_address_with_private_dns(prod: StackRun) -> None:
    annotations = _object(prod, "Gateway")["spec"]["infrastructure"]["annotations"]
    address = annotations["service.beta.kubernetes.io/azure-load-balancer-ipv4"]
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal"] == "true"
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal-subnet"] == "aks-nodes"
    zone = prod.one("azure-native:privatedns:PrivateZone", "ingress-zone").plain
    record = prod.one("azure-native:privatedns:PrivateRecordSet").plain
    assert zone["privateZoneName"] == prod.cfg.ingress_host_name
    assert (record["relativeRecordSetName"], record["aRecords"]) == ("@", [{"ipv4Address": address}])
    assert prod.one("azure-native:privatedns:VirtualNetworkLink", "ingress-zone-link").plain["virtualNetwork"] == {
        "id": prod.one("azure-native:network:VirtualNetwork").id
    }


def test_dev_ingress_is_public_for_the_configured_ranges_only(dev: StackRun) -> None:
    annotations = _object(dev, "Gateway")["spec"]["infrastructure"]["annotations"]
    assert annotations == {
        "service.beta.kubernetes.io/azure-allowed-ip-ranges": ",".join(dev.cfg.ingress_source_ranges)
    }
    assert not [r for r in dev.of_type("azure-native:privatedns:PrivateRecordSet")]


@pytest.mark.parametrize("kind", ["Gateway", "HTTPRoute", "ScaledObject", "TriggerAuthentication"])
def test_custom_resources_carry_the_stack_labels(stack: StackRun, kind: str) -> None:
    labels = _object(stack, kind)["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "ggufstack"
