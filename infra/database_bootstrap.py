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
