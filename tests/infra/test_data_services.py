"""Storage, PostgreSQL, Managed Redis and the registry: private by default, TLS floors, no plaintext keys.

Key Vault has test_vault.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from infra.roles import ACR_PULL
from tests.infra.harness import (
    REDIS_PRIMARY_KEY,
    SUBSCRIPTION_ID,
    TENANT_ID,
    Registration,
    StackRun,
    is_secret,
    run_program,
    stack_config,
)


def _server_identity(stack: StackRun) -> dict:
    return next(
        r.outputs
        for r in stack.of_type("azure-native:managedidentity:UserAssignedIdentity")
        if r.plain["resourceName"].endswith("-server")
    )


def _secret_value(stack: StackRun, name: str) -> str:
    (secret,) = [r for r in stack.of_type("azure-native:keyvault:Secret") if r.plain["secretName"] == name]
    return secret.plain["properties"]["value"]


# --- storage -----------------------------------------------------------------------------------------------------


def test_storage_account_refuses_anonymous_plaintext_and_old_tls(stack: StackRun) -> None:
    account = stack.one("azure-native:storage:StorageAccount").plain
    assert account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"
    assert account["enableHttpsTrafficOnly"] is True
    assert account["defaultToOAuthAuthentication"] is True
    assert account["allowCrossTenantReplication"] is False
    assert account["sku"]["name"] == stack.cfg.storage_sku


def test_prod_storage_has_no_shared_keys_and_no_public_network(prod: StackRun) -> None:
    account = prod.one("azure-native:storage:StorageAccount").plain
    assert account["allowSharedKeyAccess"] is False
    assert account["publicNetworkAccess"] == "Disabled"
    assert account["networkRuleSet"]["defaultAction"] == "Deny"


def test_dev_storage_follows_its_config(dev: StackRun) -> None:
    account = dev.one("azure-native:storage:StorageAccount").plain
    assert account["allowSharedKeyAccess"] is dev.cfg.storage_shared_key_access
    assert account["publicNetworkAccess"] == "Enabled"


def test_models_container_is_private_and_versioned_with_soft_delete(stack: StackRun) -> None:
    account = stack.one("azure-native:storage:StorageAccount")
    container = stack.one("azure-native:storage:BlobContainer")
    assert container.plain == {
        "accountName": account.state["name"],
        "resourceGroupName": f"rg-{stack.name}",
        "containerName": "models",
        "publicAccess": "None",
    }
    service = stack.one("azure-native:storage:BlobServiceProperties")
    assert service.plain["accountName"] == account.state["name"]
    assert service.plain["isVersioningEnabled"] is True
    assert service.plain["deleteRetentionPolicy"] == {"enabled": True, "days": 14}
    assert service.plain["containerDeleteRetentionPolicy"] == {"enabled": True, "days": 14}
    assert service.urn in container.dependencies, "the container waits for versioning to be on"


# --- postgres ----------------------------------------------------------------------------------------------------


def test_postgres_is_vnet_injected_without_public_access(stack: StackRun) -> None:
    server = stack.one("azure-native:dbforpostgresql:Server").plain
    subnet = next(r for r in stack.of_type("azure-native:network:Subnet") if r.plain["subnetName"] == "postgres")
    zone = next(
        r
        for r in stack.of_type("azure-native:privatedns:PrivateZone")
        if r.plain["privateZoneName"].endswith(".postgres.database.azure.com")
    )
    assert server["network"] == {
        "delegatedSubnetResourceId": subnet.id,
        "privateDnsZoneArmResourceId": zone.id,
        "publicNetworkAccess": "Disabled",
    }


def test_postgres_matches_the_stack_config(stack: StackRun) -> None:
    cfg = stack.cfg
    server = stack.one("azure-native:dbforpostgresql:Server").plain
    assert server["version"] == cfg.postgres_version
    assert server["sku"] == {"name": cfg.postgres_sku, "tier": cfg.postgres_tier}
    assert server["storage"]["storageSizeGB"] == cfg.postgres_storage_gb
    assert server["backup"]["backupRetentionDays"] == cfg.postgres_backup_retention_days
    assert server["highAvailability"]["mode"] == ("ZoneRedundant" if cfg.postgres_high_availability else "Disabled")


def test_prod_postgres_is_zone_redundant(prod: StackRun) -> None:
    server = prod.one("azure-native:dbforpostgresql:Server").plain
    assert server["highAvailability"] == {"mode": "ZoneRedundant", "standbyAvailabilityZone": "2"}
    assert server["availabilityZone"] == "1"


def test_postgres_enforces_tls_1_2(stack: StackRun) -> None:
    parameters = {r.plain["configurationName"]: r for r in stack.of_type("azure-native:dbforpostgresql:Configuration")}
    assert {k: r.plain["value"] for k, r in parameters.items()} == {
        "require_secure_transport": "on",
        "ssl_min_protocol_version": "TLSv1.2",
    }
    assert parameters["require_secure_transport"].urn in parameters["ssl_min_protocol_version"].dependencies


def test_postgres_admin_password_is_generated_and_only_ever_a_secret(dev: StackRun) -> None:
    stack = dev
    server = stack.one("azure-native:dbforpostgresql:Server")
    (password,) = [r for r in stack.of_type("random:index/randomPassword:RandomPassword") if "admin-password" in r.name]
    assert is_secret(server.inputs["administratorLoginPassword"])
    assert server.plain["administratorLoginPassword"] == password.state["result"]
    assert _secret_value(stack, "postgres-admin-password") == password.state["result"]


def test_database_url_secret_points_at_the_app_database_over_tls(stack: StackRun) -> None:
    server = stack.one("azure-native:dbforpostgresql:Server").outputs
    url = urlsplit(_secret_value(stack, "database-url"))
    assert (url.scheme, url.hostname, url.port, url.path) == (
        "postgresql",
        server["fullyQualifiedDomainName"],
        5432,
        "/ggufstack",
    )
    assert url.query == "sslmode=require"


def test_postgres_takes_entra_tokens_from_the_server_identity_and_no_password_in_production(stack: StackRun) -> None:
    server = stack.one("azure-native:dbforpostgresql:Server").plain
    identity = _server_identity(stack)
    assert server["authConfig"] == {
        "activeDirectoryAuth": "Enabled",
        "passwordAuth": "Disabled" if stack.cfg.production else "Enabled",
        "tenantId": TENANT_ID,
    }
    assert ("administratorLoginPassword" in server) is not stack.cfg.production
    # The URL names the identity's role and carries no password: the server sends an Entra token instead.
    url = urlsplit(_secret_value(stack, "database-url"))
    assert (url.username, url.password) == (identity["name"], None)


def test_postgres_administrators_are_the_bootstrap_identity_and_the_admin_group_not_the_server(
    stack: StackRun,
) -> None:
    """The server was the only Entra administrator, and its database was created before any administrator existed,
    so it was owned by another role; on PostgreSQL 16 `public` is owner-only and `CREATE TABLE schema_migrations`
    failed (terraform-provider-azurerm issue 27895). Now the administrators are the bootstrap identity and the admin
    group (break-glass), written one after another before anything else touches the server ("Microsoft Entra
    authentication with Azure Database for PostgreSQL",
    https://learn.microsoft.com/azure/postgresql/flexible-server/concepts-azure-ad-authentication)."""
    bootstrap = _identity_named(stack, f"id-{stack.name}-db-admin")
    admins = stack.of_type("azure-native:dbforpostgresql:AdministratorsMicrosoftEntra")
    assert [(a.plain["objectId"], a.plain["principalName"], a.plain["principalType"]) for a in admins] == [
        (bootstrap.outputs["principalId"], bootstrap.outputs["name"], "ServicePrincipal"),
        (stack.cfg.cluster_admin_group_object_id, "ggufstack-admins", "Group"),
    ]
    assert admins[0].urn in admins[1].dependencies
    assert _server_identity(stack)["principalId"] not in {a.plain["objectId"] for a in admins}
    # ARM would create the database owned by azuresu or the password admin; the bootstrap job creates it instead.
    assert not stack.of_type("azure-native:dbforpostgresql:Database")
    first_parameter = stack.one("azure-native:dbforpostgresql:Configuration", "database-require-secure-transport")
    assert admins[-1].urn in first_parameter.dependencies


def test_a_job_in_the_cluster_creates_the_servers_least_privilege_role_and_its_database(stack: StackRun) -> None:
    """`pgaadauth_create_principal_with_oid` creates a non-administrator Entra role ("Manage Microsoft Entra roles in
    Azure Database for PostgreSQL",
    https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-manage-azure-ad-users); only an administrator
    may run it, from a network that reaches the server: a job in the cluster, as the bootstrap identity."""
    (job_registration, job) = next((r, o) for r, o in stack.kubernetes_objects() if o["kind"] == "Job")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    bootstrap = _identity_named(stack, f"id-{stack.name}-db-admin")
    server_identity = _server_identity(stack)
    assert env == {
        "PGHOST": stack.one("azure-native:dbforpostgresql:Server").outputs["fullyQualifiedDomainName"],
        "PGUSER": bootstrap.outputs["name"],
        "DATABASE": "ggufstack",
        "SERVER_ROLE": server_identity["name"],
        "SERVER_OBJECT_ID": server_identity["principalId"],
    }
    script = container["command"][-1]
    assert "pgaadauth_create_principal_with_oid" in script and "GRANT USAGE, CREATE ON SCHEMA public" in script
    assert "CREATE DATABASE" in script
    (account,) = [
        o
        for _, o in stack.kubernetes_objects()
        if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == pod["serviceAccountName"]
    ]
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == bootstrap.outputs["clientId"]
    (federation,) = [
        r.plain
        for r in stack.of_type("azure-native:managedidentity:FederatedIdentityCredential")
        if r.plain["resourceName"] == bootstrap.outputs["name"]
    ]
    assert federation["subject"] == f"system:serviceaccount:ggufstack:{pod['serviceAccountName']}"
    last_admin = stack.of_type("azure-native:dbforpostgresql:AdministratorsMicrosoftEntra")[-1]
    assert last_admin.urn in job_registration.dependencies
    (server,) = [
        r
        for r, o in stack.kubernetes_objects()
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "ggufstack-server"
    ]
    assert job_registration.urn in server.dependencies


def _kinds(stack: StackRun, kind: str) -> list:
    return [(r, o) for r, o in stack.kubernetes_objects() if o["kind"] == kind]


def _identity_named(stack: StackRun, name: str) -> Registration:
    (identity,) = [
        r for r in stack.of_type("azure-native:managedidentity:UserAssignedIdentity") if r.plain["resourceName"] == name
    ]
    return identity


def test_postgres_backups_are_geo_redundant_where_configured(stack: StackRun) -> None:
    backup = stack.one("azure-native:dbforpostgresql:Server").plain["backup"]
    assert backup["geoRedundantBackup"] == ("Enabled" if stack.cfg.postgres_geo_redundant_backup else "Disabled")


def test_prod_postgres_keeps_geo_redundant_backups(prod: StackRun) -> None:
    assert prod.one("azure-native:dbforpostgresql:Server").plain["backup"]["geoRedundantBackup"] == "Enabled"


# --- redis -------------------------------------------------------------------------------------------------------


def test_redis_is_tls_only_on_port_10000(stack: StackRun) -> None:
    cluster = stack.one("azure-native:redisenterprise:RedisEnterprise").plain
    database = stack.one("azure-native:redisenterprise:Database").plain
    assert cluster["minimumTlsVersion"] == "1.2"
    assert cluster["sku"]["name"] == stack.cfg.redis_sku
    assert database["clientProtocol"] == "Encrypted"
    assert database["port"] == 10000
    assert database["databaseName"] == "default"


def test_prod_redis_has_no_public_network(prod: StackRun) -> None:
    assert prod.one("azure-native:redisenterprise:RedisEnterprise").plain["publicNetworkAccess"] == "Disabled"


def test_dev_redis_is_public_behind_tls_and_key(dev: StackRun) -> None:
    assert dev.one("azure-native:redisenterprise:RedisEnterprise").plain["publicNetworkAccess"] == "Enabled"
    assert dev.one("azure-native:redisenterprise:Database").plain["accessKeysAuthentication"] == "Enabled"
    assert _secret_value(dev, "redis-access-key") == REDIS_PRIMARY_KEY


def test_prod_redis_refuses_access_keys(prod: StackRun) -> None:
    assert prod.one("azure-native:redisenterprise:Database").plain["accessKeysAuthentication"] == "Disabled"


def test_redis_url_names_the_server_identity_and_holds_no_key(stack: StackRun) -> None:
    host = stack.one("azure-native:redisenterprise:RedisEnterprise").state["hostName"]
    object_id = _server_identity(stack)["principalId"]
    assert _secret_value(stack, "redis-url") == f"rediss://{object_id}@{host}:10000/0"
    assignment = stack.one("azure-native:redisenterprise:AccessPolicyAssignment").plain
    assert (assignment["accessPolicyName"], assignment["user"]) == ("default", {"objectId": object_id})
    assert assignment["databaseName"] == "default"


# --- registry ----------------------------------------------------------------------------------------------------


def test_registry_has_no_admin_user_or_anonymous_pull(stack: StackRun) -> None:
    registry = stack.one("azure-native:containerregistry:Registry").plain
    assert registry["adminUserEnabled"] is False
    assert registry["anonymousPullEnabled"] is False


@pytest.mark.parametrize(
    ("stack_name", "sku", "public"), [("dev", "Standard", "Enabled"), ("prod", "Premium", "Disabled")]
)
def test_registry_is_premium_and_private_where_private_endpoints_are_on(
    request: pytest.FixtureRequest, stack_name: str, sku: str, public: str
) -> None:
    registry = request.getfixturevalue(stack_name).one("azure-native:containerregistry:Registry").plain
    assert (registry["sku"]["name"], registry["publicNetworkAccess"]) == (sku, public)


def test_kubelet_identity_may_pull_from_the_registry(stack: StackRun) -> None:
    registry = stack.one("azure-native:containerregistry:Registry")
    kubelet = stack.managed_cluster().state["identityProfile"]["kubeletidentity"]
    (pull,) = [r for r in stack.of_type("azure-native:authorization:RoleAssignment") if r.plain["scope"] == registry.id]
    assert pull.plain["roleDefinitionId"] == (
        f"/subscriptions/{SUBSCRIPTION_ID}/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL}"
    )
    assert pull.plain["principalId"] == kubelet["objectId"]
    assert pull.plain["principalType"] == "ServicePrincipal"
    assert stack.by_urn(pull.parent).type == "ggufstack:infra:Registry"


def test_a_dev_preview_lists_no_redis_keys_and_shows_no_change_to_the_secrets_that_hold_them() -> None:
    """Pull requests preview dev as a Reader (README, CI), and listing a database's keys is an action Reader lacks
    ("Azure built-in roles": Reader has `*/read` only; `listKeys` is a POST action,
    https://learn.microsoft.com/azure/role-based-access-control/built-in-roles#reader): the preview failed. The key
    is unknown in a preview, and the secrets holding it ignore their value there."""
    preview = run_program("dev", stack_config("dev"), preview=True)
    assert "azure-native:redisenterprise:listDatabaseKeys" not in preview.calls
    holders = {
        r.plain["secretName"]: r.ignore_changes
        for r in preview.of_type("azure-native:keyvault:Secret")
        if r.plain["secretName"] in ("redis-access-key", "redis-url")
    }
    assert holders == {"redis-access-key": ["properties.value"], "redis-url": []}


def test_dev_up_still_reads_the_redis_key(dev: StackRun) -> None:
    assert "azure-native:redisenterprise:listDatabaseKeys" in dev.calls
    assert all(not r.ignore_changes for r in dev.of_type("azure-native:keyvault:Secret"))
