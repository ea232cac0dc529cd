"""HTTPS into the server through the Kubernetes Gateway API, implemented by AKS's application routing add-on.

The add-on's Gateway API implementation (GatewayClass `approuting-istio`, a sidecar-less Istio control plane that
AKS manages) is the successor of its managed NGINX, which Azure supports only until November 2026. It runs the
gateway as pods behind a Service of type LoadBalancer in the Gateway's namespace; annotations on the Gateway's
`infrastructure` make that an internal load balancer at a fixed address in the node subnet (prod), or a public one
that admits only the configured source ranges (dev). Internal gateways get a private DNS zone for the host name,
linked to the VNet, whose apex record points at that fixed address.

TLS terminates at the gateway with a certificate from Key Vault: the Key Vault secrets provider syncs it (key
included) into a TLS secret in the server's namespace (see infra/workload.py), and a ReferenceGrant lets this
Gateway use it. Envoy streams responses as they come (no response buffering), so the route only needs timeouts long
enough for a long generation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
import yaml
from pulumi_azure_native import privatedns
from pulumi_kubernetes import core, meta

GATEWAY_CLASS = "approuting-istio"
GATEWAY_API = "gateway.networking.k8s.io"
NAMESPACE = "ggufstack-ingress"
GATEWAY = "ggufstack"
GATEWAY_OPTIONS = f"{GATEWAY}-gateway-options"
LISTENER = "https"
HTTPS_PORT = 443
# A whole stream (a long generation at a slow token rate) must fit; the server's own limits end it sooner.
ROUTE_TIMEOUT = "3600s"
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
    # Where the backend lives and the TLS secret the server's namespace holds.
    backend_namespace: str
    backend_service: str
    backend_port: int
    tls_secret: str
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
                name=NAMESPACE,
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
            metadata=meta.v1.ObjectMetaArgs(name=GATEWAY_OPTIONS, namespace=NAMESPACE, labels=labels),
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
            metadata=meta.v1.ObjectMetaArgs(name=GATEWAY, namespace=NAMESPACE, labels=labels),
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
                            "certificateRefs": [
                                {"kind": "Secret", "name": args.tls_secret, "namespace": args.backend_namespace}
                            ],
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
            f"{name}-certificate-grant",
            api_version=f"{GATEWAY_API}/v1beta1",
            kind="ReferenceGrant",
            metadata=meta.v1.ObjectMetaArgs(name=f"{GATEWAY}-tls", namespace=args.backend_namespace, labels=labels),
            spec={
                "from": [{"group": GATEWAY_API, "kind": "Gateway", "namespace": NAMESPACE}],
                "to": [{"group": "", "kind": "Secret", "name": args.tls_secret}],
            },
            opts=in_backend,
        )
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
                        "namespace": NAMESPACE,
                        "sectionName": LISTENER,
                    }
                ],
                "hostnames": [args.host_name],
                "rules": [
                    {
                        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                        "backendRefs": [{"name": args.backend_service, "port": args.backend_port}],
                        "timeouts": {"request": ROUTE_TIMEOUT, "backendRequest": ROUTE_TIMEOUT},
                    }
                ],
            },
            opts=in_backend,
        )
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


def _service_annotations(args: IngressArgs) -> dict[str, str]:
    if args.exposure == "internal":
        return {
            **INTERNAL_ANNOTATIONS,
            "service.beta.kubernetes.io/azure-load-balancer-internal-subnet": args.internal_subnet_name,
            "service.beta.kubernetes.io/azure-load-balancer-ipv4": args.internal_address,
        }
    return {"service.beta.kubernetes.io/azure-allowed-ip-ranges": ",".join(args.source_ranges)}
