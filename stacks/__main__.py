"""The ggufstack Pulumi program: composes the infra components for the selected stack and exports what operators use.

Every property of the environment lives in `infra/`; this file only wires one component's outputs into the next.
"""

import pulumi
from pulumi_azure_native import authorization, resources

from infra import config
from infra.admin_key import AdminKey, AdminKeyArgs
from infra.app_insights import AppInsights, AppInsightsArgs
from infra.autoscaling import Autoscaling, AutoscalingArgs
from infra.cache import Cache, CacheArgs
from infra.cluster import Cluster, ClusterArgs, MaintenanceWindow
from infra.container_insights import ContainerInsights, ContainerInsightsArgs
from infra.database import ADMIN_GROUP_ROLE, Database, DatabaseArgs, DatabasePrincipal, EntraAdministrator
from infra.database_bootstrap import DATABASE_BOOTSTRAP, DatabaseBootstrap
from infra.gpu_pool import GpuPool, GpuPoolArgs
from infra.identities import Identities, IdentitiesArgs, ServerIdentity, ServiceAccountRef
from infra.ingress import CERTIFICATE_SYNC, INGRESS_NAMESPACE, Ingress, IngressArgs
from infra.managed_prometheus import ManagedPrometheus, ManagedPrometheusArgs
from infra.monitoring import Diagnostics, DiagnosticsArgs, Monitoring, MonitoringArgs
from infra.network import Network, NetworkArgs, SubnetLayout
from infra.registry import SERVER_REPOSITORY, Registry, RegistryArgs
from infra.sizing import GPU_NODE_MAX_PODS
from infra.storage import Storage, StorageArgs
from infra.vault import Vault, VaultArgs
from infra.workload import (
    APP,
    SERVER_NAMESPACE,
    SERVICE_ACCOUNT,
    SERVICE_PORT,
    Workload,
    WorkloadArgs,
)

cfg = config.load()
name = cfg.base_name(pulumi.get_stack())
tags = {"app": "ggufstack", "stack": pulumi.get_stack(), "managed-by": "pulumi"}
client = authorization.get_client_config_output()
layout = SubnetLayout.of(cfg.vnet_cidr)
entra = cfg.data_plane_auth == "entra"
# Passwords and access keys stay available to people only outside production.
keys_allowed = not cfg.production

# The one resource outside a component: the group every component is created in.
group = resources.ResourceGroup("resource-group", resource_group_name=f"rg-{name}", location=cfg.location, tags=tags)
common = {"name": name, "resource_group_name": group.name, "location": cfg.location, "tags": tags}

network = Network(
    "network",
    NetworkArgs(
        **common,
        layout=layout,
        private_endpoints=cfg.private_endpoints,
        api_server_subnet=cfg.api_server_access != "public",
        public_ingress_sources=cfg.ingress_source_ranges
        if cfg.ingress_host_name and cfg.ingress_exposure == "public"
        else [],
    ),
)
monitoring = Monitoring("monitoring", MonitoringArgs(**common, retention_days=cfg.log_retention_days))
vault = Vault(
    "vault",
    VaultArgs(
        **common,
        tenant_id=client.tenant_id,
        purge_protection=cfg.purge_protection,
        private_endpoint=network.endpoint_target("vault"),
    ),
)
AdminKey("admin-key", AdminKeyArgs(vault_name=vault.vault_name, resource_group_name=group.name))
storage = Storage(
    "storage",
    StorageArgs(
        **common,
        sku=cfg.storage_sku,
        shared_key_access=cfg.storage_shared_key_access,
        private_endpoint=network.endpoint_target("blob"),
    ),
)
cluster = Cluster(
    "cluster",
    ClusterArgs(
        **common,
        subscription_id=client.subscription_id,
        tenant_id=client.tenant_id,
        cluster_admin_group_object_id=cfg.cluster_admin_group_object_id,
        kubernetes_version=cfg.kubernetes_version,
        tier=cfg.cluster_tier,
        nodes_subnet_id=network.nodes_subnet_id,
        workspace_id=monitoring.workspace_id,
        system_vm_size=cfg.system_vm_size,
        system_node_count=cfg.system_node_count,
        availability_zones=cfg.availability_zones,
        maintenance=MaintenanceWindow(
            day=cfg.maintenance_day,
            start_hour=cfg.maintenance_start_hour,
            duration_hours=cfg.maintenance_duration_hours,
            utc_offset=cfg.maintenance_utc_offset,
        ),
        disable_local_accounts=cfg.disable_local_accounts,
        admin_group_object_ids=cfg.aks_admin_group_object_ids,
        api_server_access=cfg.api_server_access,
        api_server_subnet_id=network.api_server_subnet_id,
        api_server_authorized_ip_ranges=cfg.api_server_authorized_ip_ranges,
    ),
)
identities = Identities(
    "identities",
    IdentitiesArgs(
        **common,
        subscription_id=client.subscription_id,
        oidc_issuer_url=cluster.oidc_issuer_url,
        server=ServerIdentity(
            namespace=SERVER_NAMESPACE,
            service_account=SERVICE_ACCOUNT,
            models_container_id=storage.container_id,
            vault_id=vault.vault_id,
        ),
        certificate_reader=ServiceAccountRef(INGRESS_NAMESPACE, CERTIFICATE_SYNC) if cfg.ingress_host_name else None,
        database_bootstrap=ServiceAccountRef(SERVER_NAMESPACE, DATABASE_BOOTSTRAP) if entra else None,
    ),
)
gpu_pool = GpuPool(
    "gpu-pool",
    GpuPoolArgs(
        resource_group_name=group.name,
        cluster_name=cluster.cluster_name,
        kubernetes_version=cfg.kubernetes_version,
        nodes_subnet_id=network.nodes_subnet_id,
        vm_size=cfg.gpu_vm_size,
        min_count=cfg.gpu_node_min,
        max_count=cfg.gpu_node_max,
        spot=cfg.gpu_spot,
        os_disk_size_gb=cfg.gpu_os_disk_size_gb,
        availability_zones=cfg.gpu_availability_zones,
        max_surge=cfg.gpu_max_surge,
        max_pods=GPU_NODE_MAX_PODS,
        provider=cluster.provider,
        tags=tags,
    ),
)
database = Database(
    "database",
    DatabaseArgs(
        **common,
        subnet_id=network.postgres_subnet_id,
        dns_zone_id=network.postgres_dns_zone_id,
        sku=cfg.postgres_sku,
        tier=cfg.postgres_tier,
        version=cfg.postgres_version,
        storage_gb=cfg.postgres_storage_gb,
        high_availability=cfg.postgres_high_availability,
        backup_retention_days=cfg.postgres_backup_retention_days,
        availability_zones=cfg.availability_zones,
        geo_redundant_backup=cfg.postgres_geo_redundant_backup,
        vault_name=vault.vault_name,
        password_auth=keys_allowed,
        entra_principal=DatabasePrincipal(identities.server_principal_id, identities.server_identity_name)
        if entra
        else None,
        entra_administrators=[
            *(
                [EntraAdministrator("bootstrap", admin.principal_id, admin.name, "ServicePrincipal")]
                if (admin := identities.database_admin) is not None
                else []
            ),
            EntraAdministrator("admin-group", cfg.cluster_admin_group_object_id, ADMIN_GROUP_ROLE, "Group"),
        ],
        tenant_id=client.tenant_id,
    ),
)
cache = Cache(
    "cache",
    CacheArgs(
        **common,
        sku=cfg.redis_sku,
        vault_name=vault.vault_name,
        private_endpoint=network.endpoint_target("redis"),
        access_keys=keys_allowed,
        entra_object_id=identities.server_principal_id if entra else None,
    ),
)
ContainerInsights(
    "container-insights",
    ContainerInsightsArgs(**common, workspace_id=monitoring.workspace_id, cluster_id=cluster.cluster_id),
)
prometheus = ManagedPrometheus(
    "prometheus",
    ManagedPrometheusArgs(
        **common,
        subscription_id=client.subscription_id,
        cluster_id=cluster.cluster_id,
        cluster_name=cluster.cluster_name,
        reader_principal_ids={"keda": identities.keda_principal_id},
        admin_group_object_id=cfg.cluster_admin_group_object_id,
        alert_email=cfg.alert_email,
        zone_redundant=bool(cfg.availability_zones),
    ),
)
AppInsights(
    "app-insights", AppInsightsArgs(**common, workspace_id=monitoring.workspace_id, vault_name=vault.vault_name)
)
registry = Registry(
    "registry",
    RegistryArgs(
        **common,
        subscription_id=client.subscription_id,
        kubelet_object_id=cluster.kubelet_object_id,
        private_endpoint=network.endpoint_target("acr"),
    ),
)
Diagnostics(
    "diagnostics",
    DiagnosticsArgs(
        workspace_id=monitoring.workspace_id,
        key_vault_id=vault.vault_id,
        storage_account_id=storage.account_id,
        postgres_server_id=database.server_id,
        redis_database_id=cache.database_id,
        registry_id=registry.registry_id,
        cluster_id=cluster.cluster_id,
    ),
)
server_image = pulumi.Output.concat(registry.login_server, f"/{SERVER_REPOSITORY}:{cfg.server_image_tag}")
ingress = cfg.ingress_host_name is not None
workload = Workload(
    "workload",
    WorkloadArgs(
        provider=cluster.provider,
        image=server_image,
        # Keyed by the server's own setting names (server/config/settings.py).
        settings={
            # Azure answers the endpoint with a trailing slash; the server's setting is the account URL.
            "blob_account_url": storage.blob_endpoint.apply(lambda url: url.rstrip("/")),
            "blob_container": storage.container_name,
            "blob_name": cfg.model_blob_name,
            "model_alias": cfg.model_alias,
            "model_watch_interval_s": cfg.model_watch_interval_s,
            "model_version": cfg.model_version,
            # The catalogue, when the stack lists one (infra/catalogue.py), as the server's own entries.
            "models": [model.entry() for model in cfg.models] or None,
            "model_memory_budget_mib": cfg.model_memory_budget_mib,
            "n_ctx": cfg.context_size,
            # "entra": the mounted URLs name a user and hold no password; the server logs in with Entra tokens.
            "database_auth": cfg.data_plane_auth,
            "redis_auth": cfg.data_plane_auth,
            "log_level": cfg.log_level,
            "audit_retention_days": cfg.audit_retention_days,
            "conversations_retention_days": cfg.conversations_retention_days,
        },
        identity_client_id=identities.server_client_id,
        tenant_id=client.tenant_id,
        vault_name=vault.vault_name,
        cpu_m=cfg.server_cpu_m,
        memory_gi=cfg.server_memory_request_gi,
        cache_size_gi=cfg.model_cache_size_gi,
        download_timeout_minutes=cfg.model_download_timeout_minutes,
        gpu_node_selector=gpu_pool.node_selector,
        gpu_tolerations=gpu_pool.tolerations,
        endpoints_cidr=layout.endpoints if cfg.private_endpoints else None,
        postgres_cidr=layout.postgres,
        ingress_namespace=INGRESS_NAMESPACE if ingress else None,
        await_rollout=not cfg.skip_rollout_await,
        database_bootstrap=DatabaseBootstrap(
            host=database.fqdn,
            admin_client_id=identities.database_admin.client_id,
            admin_role=identities.database_admin.name,
            server_role=identities.server_identity_name,
            server_object_id=identities.server_principal_id,
            database=database.database_name,
            after=database.administrators_ready,
        )
        if identities.database_admin is not None
        else None,
    ),
)
Autoscaling(
    "autoscaling",
    AutoscalingArgs(
        provider=cluster.provider,
        depends_on=[workload.namespace],
        namespace=SERVER_NAMESPACE,
        deployment=APP,
        min_replicas=cfg.server_replicas,
        max_replicas=cfg.server_max_replicas,
        target_per_replica=cfg.scale_waiting_per_replica,
        query_endpoint=prometheus.query_endpoint,
        keda_client_id=identities.keda_client_id,
    ),
)
if cfg.ingress_host_name is not None:
    server_ingress = Ingress(
        "ingress",
        IngressArgs(
            name=name,
            resource_group_name=group.name,
            provider=cluster.provider,
            depends_on=[workload.namespace],
            host_name=cfg.ingress_host_name,
            exposure=cfg.ingress_exposure,
            internal_address=layout.ingress_address,
            internal_subnet_name=network.nodes_subnet_name,
            source_ranges=cfg.ingress_source_ranges,
            vnet_id=network.vnet_id,
            backend_namespace=SERVER_NAMESPACE,
            backend_service=APP,
            backend_port=SERVICE_PORT,
            vault_name=vault.vault_name,
            tenant_id=client.tenant_id,
            certificate_name=cfg.ingress_certificate_name,
            certificate_reader_client_id=identities.certificate_reader_client_id,
            proxy_tolerations=cluster.system_tolerations,
            tags=tags,
        ),
    )
    pulumi.export("ingressUrl", server_ingress.url)

pulumi.export("resourceGroupName", group.name)
pulumi.export("serverUrl", workload.service_url)
pulumi.export("serverImage", server_image)
pulumi.export("acrName", registry.registry_name)
pulumi.export("acrLoginServer", registry.login_server)
pulumi.export("modelsContainerUrl", storage.container_url)
pulumi.export("keyVaultName", vault.vault_name)
pulumi.export("clusterName", cluster.cluster_name)
pulumi.export("grafanaName", prometheus.grafana_name)
pulumi.export("grafanaUrl", prometheus.grafana_endpoint)
pulumi.export("kubeconfig", cluster.kubeconfig)
