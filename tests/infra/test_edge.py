"""The server's edge: the Gateway API ingress with TLS from Key Vault, and KEDA scaling on the server's own load.

The Gateway API and KEDA objects are custom resources kubernetes-validate has no schema for; like the
SecretProviderClass, their fields are asserted here one by one, including that no unexpected field is present.
"""

from __future__ import annotations

from typing import Any

import pytest

from infra.autoscaling import SCALE_DOWN_STABILIZATION_SECONDS
from infra.server_metrics import scale_query
from tests.infra.harness import StackRun


def _object(stack: StackRun, kind: str) -> dict[str, Any]:
    (obj,) = [o for _, o in stack.kubernetes_objects() if o["kind"] == kind]
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
    assert listener["tls"] == {
        "mode": "Terminate",
        "certificateRefs": [{"kind": "Secret", "name": "ggufstack-server-tls", "namespace": "ggufstack"}],
    }
    provider_class = _object(stack, "SecretProviderClass")
    (synced,) = provider_class["spec"]["secretObjects"]
    assert synced == {
        "secretName": "ggufstack-server-tls",
        "type": "kubernetes.io/tls",
        "data": [
            {"objectName": stack.cfg.ingress_certificate_name, "key": "tls.key"},
            {"objectName": stack.cfg.ingress_certificate_name, "key": "tls.crt"},
        ],
    }
    grant = _object(stack, "ReferenceGrant")
    assert grant["metadata"]["namespace"] == "ggufstack"
    assert grant["spec"] == {
        "from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": "ggufstack-ingress"}],
        "to": [{"group": "", "kind": "Secret", "name": "ggufstack-server-tls"}],
    }


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


@pytest.mark.parametrize("kind", ["Gateway", "HTTPRoute", "ReferenceGrant", "ScaledObject", "TriggerAuthentication"])
def test_custom_resources_carry_the_stack_labels(stack: StackRun, kind: str) -> None:
    labels = _object(stack, kind)["metadata"]["labels"]
    assert labels["app.kubernetes.io/part-of"] == "ggufstack"
