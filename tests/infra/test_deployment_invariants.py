"""Deployment facts the mocks cannot see, checked on both stacks: what must exist, be permitted or be supported
before `pulumi up` reaches a step, so a first deployment against a real subscription does not stop there.

Each invariant names the documentation page it rests on. They are written against what the program declares (kinds,
taints, mounts, role assignments, versions, names), not against how a component happens to build it, so a new
component that breaks one fails here.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path

import pytest
import yaml

from infra import aks_versions
from infra.roles import NETWORK_CONTRIBUTOR
from tests.infra.harness import GENERIC, Registration, StackRun

_AGENT_POOL = "azure-native:containerservice:AgentPool"


def _role(stack: StackRun, role: str) -> list:
    return [
        r
        for r in stack.of_type("azure-native:authorization:RoleAssignment")
        if r.plain["roleDefinitionId"].endswith(f"/roleDefinitions/{role}")
    ]


def test_kubernetes_version_is_supported_on_the_date_of_the_run(stack: StackRun) -> None:
    """ "Supported Kubernetes versions in Azure Kubernetes Service (AKS)", AKS Kubernetes release calendar
    (https://learn.microsoft.com/azure/aks/supported-kubernetes-versions): AKS creates clusters only on supported
    minors, and the Free and Standard tiers have no long-term support past a minor's end of life."""
    supported = [m.version for m in aks_versions.supported(date.today())]
    cluster = stack.managed_cluster().plain
    versions = [cluster["kubernetesVersion"]]
    versions += [p["orchestratorVersion"] for p in (r.plain for r in stack.of_type(_AGENT_POOL))]
    for version in versions:
        assert aks_versions.minor_of(version) in supported, f"{version} is not among {supported} on {date.today()}"


def test_control_plane_identity_can_join_every_subnet_the_cluster_uses_before_it_is_created(
    stack: StackRun,
) -> None:
    """ "Use a managed identity in AKS" (https://learn.microsoft.com/azure/aks/use-managed-identity) and "API Server
    VNet Integration" (https://learn.microsoft.com/azure/aks/api-server-vnet-integration): a user-assigned control
    plane identity needs Network Contributor on every custom subnet (nodes and the API server's); without it on the
    API server subnet, cluster provisioning fails."""
    cluster = stack.managed_cluster()
    (identity_id,) = cluster.plain["identity"]["userAssignedIdentities"]
    principal = next(r for r in stack.registrations if r.id == identity_id).outputs["principalId"]
    subnets = {p["vnetSubnetID"] for p in cluster.plain["agentPoolProfiles"]}
    subnets |= {r.plain["vnetSubnetID"] for r in stack.of_type(_AGENT_POOL)}
    if subnet := cluster.plain["apiServerAccessProfile"].get("subnetId"):
        subnets.add(subnet)
    grants = [r for r in _role(stack, NETWORK_CONTRIBUTOR) if r.plain["principalId"] == principal]
    for subnet in subnets:
        covering = [g for g in grants if subnet == g.plain["scope"] or subnet.startswith(g.plain["scope"] + "/")]
        assert covering, f"the control plane may not join {subnet}"
        assert any(g.urn in cluster.dependencies for g in covering), f"{subnet}'s grant may come after the cluster"


def _waits_for(stack: StackRun, registration: Registration, target_urn: str) -> bool:
    """Whether `registration` waits for `target_urn`: through its dependencies or its provider, transitively."""
    by_urn = {r.urn: r for r in stack.registrations}
    seen: set[str] = set()
    todo = [registration]
    while todo:
        r = todo.pop()
        # A provider reference is "<urn>::<id>"; a resource waits for its provider and what the provider waits for.
        upstream = [*r.dependencies, *([r.provider.rsplit("::", 1)[0]] if r.provider else [])]
        for urn in upstream:
            if urn == target_urn:
                return True
            if urn not in seen and urn in by_urn:
                seen.add(urn)
                todo.append(by_urn[urn])
    return False


def _path(document: dict, dotted: str) -> object:
    for key in dotted.split("."):
        document = document.get(key, {}) if isinstance(document, dict) else {}
    return document


# API group of a custom resource -> the ManagedCluster setting whose add-on installs its CRDs, and the value that does.
# "Azure Kubernetes Service (AKS) application routing add-on with the Kubernetes Gateway API"
# (https://learn.microsoft.com/azure/aks/app-routing-gateway-api): the managed Gateway API CRDs; "Use the Azure Key
# Vault provider for Secrets Store CSI Driver" (https://learn.microsoft.com/azure/aks/csi-secrets-store-driver);
# "Create a PodMonitor/ServiceMonitor" for managed Prometheus
# (https://learn.microsoft.com/azure/azure-monitor/containers/prometheus-metrics-scrape-crd); "Kubernetes Event-driven
# Autoscaling (KEDA) add-on" (https://learn.microsoft.com/azure/aks/keda-about).
CRD_SOURCES = {
    "gateway.networking.k8s.io": ("ingressProfile.gatewayAPI.installation", "Standard"),
    "secrets-store.csi.x-k8s.io": ("addonProfiles.azureKeyvaultSecretsProvider.enabled", True),
    "azmonitoring.coreos.com": ("azureMonitorProfile.metrics.enabled", True),
    "keda.sh": ("workloadAutoScalerProfile.keda.enabled", True),
}
# Groups Kubernetes serves itself that carry a dot (the core group and apps, batch, policy have none).
BUILT_IN_GROUPS = {"networking.k8s.io", "rbac.authorization.k8s.io", "apiextensions.k8s.io"}
# GatewayClass -> the add-on setting that creates it.
GATEWAY_CLASSES = {
    "approuting-istio": ("ingressProfile.webAppRouting.gatewayAPIImplementations.appRoutingIstio.mode", "Enabled"),
}


def test_every_custom_resource_kind_is_installed_by_the_stack_or_an_enabled_add_on_before_it_is_declared(
    stack: StackRun,
) -> None:
    """A custom resource whose CRD is not installed fails the apply with "no matches for kind"; one declared before
    the cluster that installs it can race it. Pages in CRD_SOURCES."""
    cluster = stack.managed_cluster()
    installed_here = {
        obj["spec"]["group"]
        for r, obj in stack.kubernetes_objects()
        if r.type == "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition"
    }
    for r, obj in stack.kubernetes_objects():
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        if "." not in group or group in BUILT_IN_GROUPS:
            continue
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if group not in installed_here:
            assert group in CRD_SOURCES, f"{where}: nothing installs {group}"
            setting, value = CRD_SOURCES[group]
            assert _path(cluster.plain, setting) == value, f"{where}: {setting} is not {value!r}"
        assert _waits_for(stack, r, cluster.urn), f"{where} may be applied before the cluster exists"
        if obj["kind"] == "Gateway":
            setting, value = GATEWAY_CLASSES[obj["spec"]["gatewayClassName"]]
            assert _path(cluster.plain, setting) == value, f"{where}: {setting} is not {value!r}"


# AKS taints every spot node with this on its own ("Add a spot node pool to an AKS cluster",
# https://learn.microsoft.com/azure/aks/spot-node-pool).
SPOT_TAINT = "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet", "Job"}


def _pools(stack: StackRun) -> list[tuple[str, list[tuple[str, str, str]], dict[str, str]]]:
    """Every node pool as (name, taints as (key, value, effect), labels)."""
    pools = [*stack.managed_cluster().plain["agentPoolProfiles"], *(r.plain for r in stack.of_type(_AGENT_POOL))]
    found = []
    for pool in pools:
        taints = list(pool.get("nodeTaints", [])) + ([SPOT_TAINT] if pool.get("scaleSetPriority") == "Spot" else [])
        parsed = []
        for taint in taints:
            key_value, effect = taint.rsplit(":", 1)
            key, _, value = key_value.partition("=")
            parsed.append((key, value, effect))
        name = pool.get("name") or pool["agentPoolName"]
        labels = {**pool.get("nodeLabels", {}), "kubernetes.azure.com/agentpool": name}
        found.append((name, parsed, labels))
    return found


def _tolerates(tolerations: list[dict], taint: tuple[str, str, str]) -> bool:
    key, value, effect = taint
    for t in tolerations:
        key_ok = t.get("key") == key or (not t.get("key") and t.get("operator") == "Exists")
        value_ok = t.get("operator") == "Exists" or t.get("value", "") == value
        if key_ok and value_ok and t.get("effect") in (None, "", effect):
            return True
    return False


def _runs_pods(obj: dict) -> bool:
    return obj["kind"] in WORKLOADS


def _pod_templates(stack: StackRun) -> list[tuple[str, dict]]:
    """Every pod spec the stack declares, and those it configures: a Gateway's proxies, through its ConfigMap."""
    objects = [obj for _, obj in stack.kubernetes_objects()]
    specs = [(f"{o['kind']} {o['metadata']['name']}", o["spec"]["template"]["spec"]) for o in objects if _runs_pods(o)]
    for gateway in (o for o in objects if o["kind"] == "Gateway"):
        where = f"Gateway {gateway['metadata']['name']}'s proxies"
        ref = gateway["spec"].get("infrastructure", {}).get("parametersRef")
        overlay: dict = {}
        if ref and ref["kind"] == "ConfigMap":
            (config,) = [
                o
                for o in objects
                if o["kind"] == "ConfigMap"
                and o["metadata"]["name"] == ref["name"]
                and o["metadata"]["namespace"] == gateway["metadata"]["namespace"]
            ]
            overlay = yaml.safe_load(config["data"].get("deployment", "{}"))
        specs.append((where, overlay.get("spec", {}).get("template", {}).get("spec", {})))
    return specs


def test_every_pod_template_tolerates_the_taints_of_some_pool_it_may_run_on(stack: StackRun) -> None:
    """Every pool is tainted (system: CriticalAddonsOnly, "Manage system node pools in AKS",
    https://learn.microsoft.com/azure/aks/use-system-pools; GPU: sku=gpu), so a pod without a matching toleration
    stays Pending. The gateway's proxies are created by istiod and get tolerations only through the Gateway's
    `infrastructure.parametersRef` ConfigMap, whose Deployment overlay may set `spec.template.spec.tolerations`
    ("Istio-based service mesh add-on: ingress with the Kubernetes Gateway API", ConfigMap customizations,
    https://learn.microsoft.com/azure/aks/istio-gateway-api)."""
    pools = _pools(stack)
    templates = _pod_templates(stack)
    assert any(where.startswith("Gateway") for where, _ in templates) == bool(stack.cfg.ingress_host_name)
    for where, spec in templates:
        selector = spec.get("nodeSelector", {})
        fits = [
            name
            for name, taints, labels in pools
            if all(labels.get(k) == v for k, v in selector.items())
            and all(_tolerates(spec.get("tolerations", []), t) for t in taints if t[2] in ("NoSchedule", "NoExecute"))
        ]
        assert fits, f"{where} tolerates no pool's taints ({[(n, t) for n, t, _ in pools]})"


PATTERNS = json.loads((Path(__file__).parent / "rest_spec_patterns.json").read_text())["patterns"]


def _named(stack: StackRun, typ: str) -> list[Registration]:
    if "/" in typ:  # a generic resource, by its ARM type
        namespace, resource_type = typ.split("/")
        return [
            r
            for r in stack.of_type(GENERIC)
            if (r.plain["resourceProviderNamespace"], r.plain["resourceType"]) == (namespace, resource_type)
        ]
    return stack.of_type(typ)


@pytest.mark.parametrize("spec", PATTERNS, ids=[p["type"] for p in PATTERNS])
def test_resource_names_match_their_rest_spec_patterns(stack: StackRun, spec: dict) -> None:
    """ARM (and `az`) refuse a name outside the REST spec's pattern, which the mocks accept: e.g. a Redis access
    policy assignment named with a hyphen ("ggufstack-server") against `^[A-Za-z0-9]{1,60}$`. Patterns and their
    source files are in rest_spec_patterns.json."""
    named = _named(stack, spec["type"])
    assert named, f"the stack declares no {spec['type']}"
    for r in named:
        assert re.fullmatch(spec["pattern"], r.outputs["name"]), f"{r.outputs['name']!r} ({spec['source']})"


def test_nothing_an_awaited_pod_mounts_is_created_by_hand(stack: StackRun) -> None:
    """A pod whose volume needs an object someone must create first cannot start until then: the Secrets Store CSI
    driver fails the whole mount when one Key Vault object is missing ("Use the Azure Key Vault provider for Secrets
    Store CSI Driver in AKS", https://learn.microsoft.com/azure/aks/csi-secrets-store-driver). So every Key Vault
    object, Secret or ConfigMap a pod template mounts is written by the stack, unless the pod is not awaited
    (pulumi.com/skipAwait) and is not the server: then it is the pod that waits for a documented manual step."""
    objects = [obj for _, obj in stack.kubernetes_objects()]
    written = {r.plain["secretName"] for r in stack.of_type("azure-native:keyvault:Secret")}
    declared = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects}
    provider_classes = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "SecretProviderClass"
    }
    for workload in (o for o in objects if _runs_pods(o)):
        where = f"{workload['kind']} {workload['metadata']['name']}"
        namespace = workload["metadata"]["namespace"]
        hand_made = []
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "csi" in volume and volume["csi"]["driver"] == "secrets-store.csi.k8s.io":
                spc = provider_classes[(namespace, volume["csi"]["volumeAttributes"]["secretProviderClass"])]
                names = [json.loads(o)["objectName"] for o in json.loads(spc["spec"]["parameters"]["objects"])["array"]]
                hand_made += [n for n in names if n not in written]
            if "secret" in volume and ("Secret", namespace, volume["secret"]["secretName"]) not in declared:
                hand_made.append(volume["secret"]["secretName"])
            if "configMap" in volume and ("ConfigMap", namespace, volume["configMap"]["name"]) not in declared:
                hand_made.append(volume["configMap"]["name"])
        if hand_made:
            awaited = workload["metadata"].get("annotations", {}).get("pulumi.com/skipAwait") != "true"
            assert not awaited, f"{where} waits for {hand_made}, made by hand, and `pulumi up` waits for it"
            assert workload["metadata"]["name"] != "ggufstack-server", f"the server waits for {hand_made}"
