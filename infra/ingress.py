"""HTTPS into the server through the Kubernetes Gateway API, implemented by AKS's application routing add-on.

The add-on's Gateway API implementation (GatewayClass `approuting-istio`, a sidecar-less Istio control plane that
AKS manages) is the successor of its managed NGINX, which Azure supports only until November 2026. It runs the
gateway as pods behind a Service of type LoadBalancer in the Gateway's namespace; annotations on the Gateway's
`infrastructure` make that an internal load balancer at a fixed address in the node subnet (prod), or a public one
that admits only the configured source ranges (dev). Internal gateways get a private DNS zone for the host name,
linked to the VNet, whose apex record points at that fixed address.

TLS terminates at the gateway with a certificate imported by hand into Key Vault. The Key Vault secrets provider
syncs it (key included) into a TLS secret in the Gateway's own namespace while a pod mounts it: a small pod that does
nothing else, with a SecretProviderClass of its own (Microsoft's pattern for ingress certificates). The driver fails a
mount when an object is missing, so this pod, not the server, waits for the certificate, and `pulumi up` does not
wait for this pod. Envoy streams responses as they come (no response buffering), so the route only needs timeouts long
enough for a long generation.

The route carries only what clients call. Through a gateway every client reaches the server from the gateway's own
address, and the server counts wrong admin keys per address, so an admin API on the route would let any client who
can reach the gateway lock it for everyone, a minute at a time; the probes and the OpenAPI document are of no use to
clients either. Operators reach those through `kubectl port-forward`, behind the cluster's Entra ID sign-in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pulumi_azure_native import privatedns
from pulumi_kubernetes import apps, core, meta

from infra.annotations import SKIP_AWAIT, checkov_skips
from infra.pod_security import locked_down_container, non_root_pod
from infra.vault import secret_provider_objects

GATEWAY_CLASS = "approuting-istio"
GATEWAY_API = "gateway.networking.k8s.io"
# The Kubernetes namespace of the Gateway, its proxies and the certificate sync: apart from the server's.
INGRESS_NAMESPACE = "ggufstack-ingress"
GATEWAY = "ggufstack"
GATEWAY_OPTIONS = f"{GATEWAY}-gateway-options"
TLS_SECRET = f"{GATEWAY}-tls"
CERTIFICATE_SYNC = "certificate-sync"
# The smallest image that keeps a pod running (it only holds the volume); pinned like any dependency.
SYNC_IMAGE = "registry.k8s.io/pause:3.10"
SYNC_UID = 65535  # the pause image's own unprivileged user
SYNC_SKIPS = {
    "CKV_K8S_8": "the pod runs pause and serves nothing to probe; it exists only so the driver syncs the certificate",
    "CKV_K8S_9": "the pod runs pause and serves nothing to probe; it exists only so the driver syncs the certificate",
    "CKV_K8S_43": "the upstream pause image is pinned by its release tag",
}
LISTENER = "https"
HTTPS_PORT = 443
# A whole stream (a long generation at a slow token rate) must fit; the server's own limits end it sooner.
ROUTE_TIMEOUT = "3600s"
# Gateway API path matches (type, value): the OpenAI, Responses, Anthropic and conversation APIs under /v1, and
# llama.cpp's tokenizer routes. Anything else is answered 404 by the gateway. PathPrefix matches whole path elements
# ("/v1" matches "/v1/models", not "/v1x"), Exact the path alone (https://gateway-api.sigs.k8s.io/api-types/httproute/,
# "Matches" and "Path").
CLIENT_PATHS: tuple[tuple[str, str], ...] = (
    ("PathPrefix", "/v1"),
    ("Exact", "/tokenize"),
    ("Exact", "/detokenize"),
)
INTERNAL_ANNOTATIONS = {"service.beta.kubernetes.io/azure-load-balancer-internal": "true"}


@dataclass(frozen=True)
class IngressArgs:
    name: str
    resource_group_name: pulumi.Input[str]
    provider: k8s.Provider
    depends_on: Sequence[pulumi.Resource]
    host_name: str
    # internal: an internal load balancer at `internal_address` and a private DNS zone; public: a public one.
    exposure: str
    internal_address: str
    internal_subnet_name: str
    source_ranges: Sequence[str]
    vnet_id: pulumi.Input[str]
    backend_namespace: str
    backend_service: str
    backend_port: int
    # The Key Vault certificate (imported by hand) and the identity that may read it, federated with
    # CERTIFICATE_SYNC's service account.
    vault_name: pulumi.Input[str]
    tenant_id: pulumi.Input[str]
    certificate_name: str
    certificate_reader_client_id: pulumi.Input[str]
    # Every pool is tainted; the proxies istiod creates for the Gateway get these through its parametersRef.
    proxy_tolerations: Sequence[Mapping[str, str]]
    tags: Mapping[str, str]


class Ingress(pulumi.ComponentResource):
    url: str

    def __init__(self, name: str, args: IngressArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("ggufstack:infra:Ingress", name, None, opts)
        on_cluster = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        labels = {"app.kubernetes.io/part-of": "ggufstack", "app.kubernetes.io/managed-by": "pulumi"}
        namespace = core.v1.Namespace(
            f"{name}-namespace",
            metadata=meta.v1.ObjectMetaArgs(
                name=INGRESS_NAMESPACE,
                labels={
                    **labels,
                    # The gateway's Envoy pods meet the baseline standard; "restricted" would refuse them.
                    "pod-security.kubernetes.io/enforce": "baseline",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            ),
            opts=on_cluster,
        )
        in_namespace = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace])
        # istiod overlays this on the proxies' Deployment: tolerations are on the add-on's allow list of fields.
        options = core.v1.ConfigMap(
            f"{name}-gateway-options",
            metadata=meta.v1.ObjectMetaArgs(name=GATEWAY_OPTIONS, namespace=INGRESS_NAMESPACE, labels=labels),
            data={
                "deployment": yaml.safe_dump(
                    {"spec": {"template": {"spec": {"tolerations": [dict(t) for t in args.proxy_tolerations]}}}},
                    sort_keys=False,
                )
            },
            opts=in_namespace,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-gateway",
            api_version=f"{GATEWAY_API}/v1",
            kind="Gateway",
            metadata=meta.v1.ObjectMetaArgs(name=GATEWAY, namespace=INGRESS_NAMESPACE, labels=labels),
            spec={
                "gatewayClassName": GATEWAY_CLASS,
                "infrastructure": {
                    "annotations": _service_annotations(args),
                    "parametersRef": {"group": "", "kind": "ConfigMap", "name": GATEWAY_OPTIONS},
                },
                "listeners": [
                    {
                        "name": LISTENER,
                        "protocol": "HTTPS",
                        "port": HTTPS_PORT,
                        "hostname": args.host_name,
                        "tls": {
                            "mode": "Terminate",
                            "certificateRefs": [{"kind": "Secret", "name": TLS_SECRET}],
                        },
                        "allowedRoutes": {
                            "namespaces": {
                                "from": "Selector",
                                "selector": {"matchLabels": {"kubernetes.io/metadata.name": args.backend_namespace}},
                            }
                        },
                    }
                ],
            },
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=[namespace, options]),
        )
        in_backend = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=list(args.depends_on))
        k8s.apiextensions.CustomResource(
            f"{name}-route",
            api_version=f"{GATEWAY_API}/v1",
            kind="HTTPRoute",
            metadata=meta.v1.ObjectMetaArgs(name=args.backend_service, namespace=args.backend_namespace, labels=labels),
            spec={
                "parentRefs": [
                    {
                        "group": GATEWAY_API,
                        "kind": "Gateway",
                        "name": GATEWAY,
                        "namespace": INGRESS_NAMESPACE,
                        "sectionName": LISTENER,
                    }
                ],
                "hostnames": [args.host_name],
                "rules": [
                    {
                        "matches": [{"path": {"type": kind, "value": value}} for kind, value in CLIENT_PATHS],
                        "backendRefs": [{"name": args.backend_service, "port": args.backend_port}],
                        "timeouts": {"request": ROUTE_TIMEOUT, "backendRequest": ROUTE_TIMEOUT},
                    }
                ],
            },
            opts=in_backend,
        )
        self._certificate_sync(name, args, labels, in_namespace)
        if args.exposure == "internal":
            zone = privatedns.PrivateZone(
                f"{name}-zone",
                # A zone for exactly the host name, so the rest of its domain still resolves publicly.
                private_zone_name=args.host_name,
                resource_group_name=args.resource_group_name,
                location="global",
                tags=args.tags,
                opts=pulumi.ResourceOptions(parent=self),
            )
            privatedns.VirtualNetworkLink(
                f"{name}-zone-link",
                virtual_network_link_name=f"{args.name}-vnet",
                private_zone_name=zone.name,
                resource_group_name=args.resource_group_name,
                location="global",
                virtual_network=privatedns.SubResourceArgs(id=args.vnet_id),
                registration_enabled=False,
                tags=args.tags,
                opts=pulumi.ResourceOptions(parent=self),
            )
            privatedns.PrivateRecordSet(
                f"{name}-record",
                record_type="A",
                relative_record_set_name="@",
                private_zone_name=zone.name,
                resource_group_name=args.resource_group_name,
                ttl=300,
                a_records=[privatedns.ARecordArgs(ipv4_address=args.internal_address)],
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.url = f"https://{args.host_name}"
        self.register_outputs({"url": self.url})

    def _certificate_sync(
        self, name: str, args: IngressArgs, labels: Mapping[str, str], opts: pulumi.ResourceOptions
    ) -> None:
        sync_labels = {**labels, "app.kubernetes.io/name": CERTIFICATE_SYNC}
        service_account = core.v1.ServiceAccount(
            f"{name}-certificate-sync",
            metadata=meta.v1.ObjectMetaArgs(
                name=CERTIFICATE_SYNC,
                namespace=INGRESS_NAMESPACE,
                labels=sync_labels,
                annotations={
                    "azure.workload.identity/client-id": args.certificate_reader_client_id,
                    "azure.workload.identity/tenant-id": args.tenant_id,
                },
            ),
            automount_service_account_token=False,
            opts=opts,
        )
        secret_provider = k8s.apiextensions.CustomResource(
            f"{name}-certificate",
            api_version="secrets-store.csi.x-k8s.io/v1",
            kind="SecretProviderClass",
            metadata=meta.v1.ObjectMetaArgs(name=TLS_SECRET, namespace=INGRESS_NAMESPACE, labels=sync_labels),
            spec={
                "provider": "azure",
                "parameters": {
                    "usePodIdentity": "false",
                    "clientID": args.certificate_reader_client_id,
                    "keyvaultName": args.vault_name,
                    "tenantId": args.tenant_id,
                    # A certificate read as a secret comes with its private key, which the TLS secret needs.
                    "objects": secret_provider_objects([{"objectName": args.certificate_name, "objectType": "secret"}]),
                },
                "secretObjects": [
                    {
                        "secretName": TLS_SECRET,
                        "type": "kubernetes.io/tls",
                        "data": [
                            {"objectName": args.certificate_name, "key": "tls.key"},
                            {"objectName": args.certificate_name, "key": "tls.crt"},
                        ],
                    }
                ],
            },
            opts=opts,
        )
        resources = {"cpu": "10m", "memory": "16Mi"}
        apps.v1.Deployment(
            f"{name}-certificate-sync",
            metadata=meta.v1.ObjectMetaArgs(
                name=CERTIFICATE_SYNC,
                namespace=INGRESS_NAMESPACE,
                labels=sync_labels,
                # It starts only once the certificate is imported by hand: `pulumi up` must not wait for it.
                annotations={**checkov_skips(SYNC_SKIPS), **SKIP_AWAIT},
            ),
            spec=apps.v1.DeploymentSpecArgs(
                replicas=1,
                selector=meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": CERTIFICATE_SYNC}),
                template=core.v1.PodTemplateSpecArgs(
                    metadata=meta.v1.ObjectMetaArgs(labels={**sync_labels, "azure.workload.identity/use": "true"}),
                    spec=core.v1.PodSpecArgs(
                        service_account_name=CERTIFICATE_SYNC,
                        automount_service_account_token=False,
                        tolerations=[core.v1.TolerationArgs(**t) for t in args.proxy_tolerations],
                        security_context=non_root_pod(SYNC_UID),
                        containers=[
                            core.v1.ContainerArgs(
                                name="pause",
                                image=SYNC_IMAGE,
                                image_pull_policy="Always",
                                resources=core.v1.ResourceRequirementsArgs(requests=resources, limits=resources),
                                security_context=locked_down_container(),
                                volume_mounts=[
                                    core.v1.VolumeMountArgs(name="certificate", mount_path="/mnt/tls", read_only=True)
                                ],
                            )
                        ],
                        volumes=[
                            core.v1.VolumeArgs(
                                name="certificate",
                                csi=core.v1.CSIVolumeSourceArgs(
                                    driver="secrets-store.csi.k8s.io",
                                    read_only=True,
                                    volume_attributes={"secretProviderClass": TLS_SECRET},
                                ),
                            )
                        ],
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.provider, depends_on=[service_account, secret_provider]
            ),
        )


def _service_annotations(args: IngressArgs) -> dict[str, str]:
    if args.exposure == "internal":
        return {
            **INTERNAL_ANNOTATIONS,
            "service.beta.kubernetes.io/azure-load-balancer-internal-subnet": args.internal_subnet_name,
            "service.beta.kubernetes.io/azure-load-balancer-ipv4": args.internal_address,
        }
    return {"service.beta.kubernetes.io/azure-allowed-ip-ranges": ",".join(args.source_ranges)}
