"""What the in-cluster job runs once the PostgreSQL server has its Entra administrators: the server's own,
least-privilege database principal and the database it owns nothing but tables in.

ARM can make a principal an Entra *administrator* only; any other Entra role must be created in SQL by an
administrator (`pgaadauth_create_principal_with_oid`, "Manage Microsoft Entra roles in Azure Database for PostgreSQL",
https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-manage-azure-ad-users). The job logs in as the
stack's database-bootstrap identity, an Entra administrator, over the private network the cluster shares with the
server. It creates the database itself, so the database's owner (who alone may grant CREATE on PostgreSQL 16's
owner-only `public` schema) is that administrator and not the platform's `azuresu` or the password admin, which is
what an ARM-created database gets (terraform-provider-azurerm issue 27895). Every step is idempotent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s
from pulumi_kubernetes import batch, core, meta, networking

from infra.annotations import SKIP_AWAIT, checkov_skips
from infra.network import HTTPS_PORT, POSTGRES_PORT
from infra.network_policies import dns_egress, egress
from infra.pod_security import locked_down_container, non_root_pod

# The name of the job, its service account (federated with the database-bootstrap identity) and its policy.
DATABASE_BOOTSTRAP = "ggufstack-server-db-bootstrap"
BOOTSTRAP_SKIPS = {
    "CKV_K8S_43": "images are built by this repository's CI and deployed by an immutable release tag (serverImageTag)",
}

# Runs under the server image's Python (psycopg and azure-identity are server dependencies); arguments come from the
# environment so the script itself never changes between stacks.
SCRIPT = """
import os
import psycopg
from psycopg import sql
from azure.identity import DefaultAzureCredential

token = DefaultAzureCredential().get_token("https://ossrdbms-aad.database.windows.net/.default").token
host, admin = os.environ["PGHOST"], os.environ["PGUSER"]
database, role, oid = os.environ["DATABASE"], os.environ["SERVER_ROLE"], os.environ["SERVER_OBJECT_ID"]


def connect(dbname):
    return psycopg.connect(host=host, user=admin, password=token, dbname=dbname, sslmode="require", autocommit=True)


with connect("postgres") as db:
    if not db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
        db.execute("SELECT * FROM pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)", (role, oid))
    if not db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
        db.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
with connect(database) as db:
    names = {"database": sql.Identifier(database), "role": sql.Identifier(role)}
    db.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}").format(**names))
    db.execute(sql.SQL("GRANT USAGE, CREATE ON SCHEMA public TO {role}").format(**names))
print(f"{role} may create tables in {database}")
"""


@dataclass(frozen=True)
class DatabaseBootstrap:
    """Who the bootstrap job logs in as (an Entra administrator) and whom it creates a role for."""

    host: pulumi.Input[str]
    admin_client_id: pulumi.Input[str]
    admin_role: pulumi.Input[str]
    server_role: pulumi.Input[str]
    server_object_id: pulumi.Input[str]
    database: str
    # The administrators exist once this has been written.
    after: pulumi.Resource


def bootstrap_job(
    name: str,
    boot: DatabaseBootstrap,
    *,
    namespace: str,
    image: pulumi.Input[str],
    tenant_id: pulumi.Input[str],
    run_as_uid: int,
    node_selector: Mapping[str, str],
    tolerations: Sequence[Mapping[str, str]],
    postgres_cidr: str,
    await_rollout: bool,
    timeout_minutes: int,
    parent: pulumi.Resource,
    provider: k8s.Provider,
    depends_on: Sequence[pulumi.Resource],
) -> batch.v1.Job:
    """The job that runs SCRIPT in the server's image as the database administrator, with its service account and
    NetworkPolicy; `parent` (the workload) keeps them where deployed stacks have them."""
    labels = {"app.kubernetes.io/name": DATABASE_BOOTSTRAP, "app.kubernetes.io/part-of": "ggufstack"}
    opts = pulumi.ResourceOptions(parent=parent, provider=provider, depends_on=list(depends_on))
    account = core.v1.ServiceAccount(
        f"{name}-db-bootstrap",
        metadata=meta.v1.ObjectMetaArgs(
            name=DATABASE_BOOTSTRAP,
            namespace=namespace,
            labels=labels,
            annotations={
                "azure.workload.identity/client-id": boot.admin_client_id,
                "azure.workload.identity/tenant-id": tenant_id,
            },
        ),
        automount_service_account_token=False,
        opts=opts,
    )
    # The namespace denies all traffic by default: DNS, Entra ID (HTTPS) and PostgreSQL only.
    policy = networking.v1.NetworkPolicy(
        f"{name}-db-bootstrap",
        metadata=meta.v1.ObjectMetaArgs(name=DATABASE_BOOTSTRAP, namespace=namespace, labels=labels),
        spec=networking.v1.NetworkPolicySpecArgs(
            pod_selector=meta.v1.LabelSelectorArgs(match_labels={"app.kubernetes.io/name": DATABASE_BOOTSTRAP}),
            policy_types=["Egress"],
            egress=[dns_egress(), egress("0.0.0.0/0", HTTPS_PORT), egress(postgres_cidr, POSTGRES_PORT)],
        ),
        opts=opts,
    )
    resources = {"cpu": "100m", "memory": "256Mi"}
    env = {
        "PGHOST": boot.host,
        "PGUSER": boot.admin_role,
        "DATABASE": boot.database,
        "SERVER_ROLE": boot.server_role,
        "SERVER_OBJECT_ID": boot.server_object_id,
    }
    return batch.v1.Job(
        f"{name}-db-bootstrap",
        metadata=meta.v1.ObjectMetaArgs(
            name=DATABASE_BOOTSTRAP,
            namespace=namespace,
            labels=labels,
            annotations={**checkov_skips(BOOTSTRAP_SKIPS), **({} if await_rollout else SKIP_AWAIT)},
        ),
        spec=batch.v1.JobSpecArgs(
            backoff_limit=6,
            template=core.v1.PodTemplateSpecArgs(
                metadata=meta.v1.ObjectMetaArgs(labels={**labels, "azure.workload.identity/use": "true"}),
                spec=core.v1.PodSpecArgs(
                    restart_policy="OnFailure",
                    service_account_name=DATABASE_BOOTSTRAP,
                    automount_service_account_token=False,
                    # The GPU nodes already pull the server image; no GPU is requested.
                    node_selector=dict(node_selector),
                    tolerations=[core.v1.TolerationArgs(**t) for t in tolerations],
                    security_context=non_root_pod(run_as_uid),
                    containers=[
                        core.v1.ContainerArgs(
                            name="bootstrap",
                            image=image,
                            image_pull_policy="Always",
                            command=["python", "-c", SCRIPT],
                            env=[core.v1.EnvVarArgs(name=k, value=v) for k, v in env.items()],
                            resources=core.v1.ResourceRequirementsArgs(requests=resources, limits=resources),
                            security_context=locked_down_container(),
                        )
                    ],
                ),
            ),
        ),
        opts=pulumi.ResourceOptions(
            parent=parent,
            provider=provider,
            depends_on=[*depends_on, account, policy, boot.after],
            # A fixed name, so a changed job is deleted before its replacement is created.
            delete_before_replace=True,
            custom_timeouts=pulumi.CustomTimeouts(create=f"{timeout_minutes}m"),
        ),
    )
