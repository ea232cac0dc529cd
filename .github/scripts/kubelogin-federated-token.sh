#!/usr/bin/env bash
# Keep kubelogin authenticating for as long as the job runs.
#
# The stack's kubeconfig logs in with `kubelogin --login azurecli`, but in GitHub Actions the Azure CLI holds a login
# made from a GitHub OIDC token that it cannot refresh once it expires (azure-cli issue 28708), and a first
# `pulumi up` applies the Kubernetes workload long after that. Instead, kubelogin's `workloadidentity` mode (which
# AAD_LOGIN_METHOD selects over the kubeconfig's --login) exchanges a GitHub OIDC token read from a file each time it
# needs an Entra token; this script writes that file now and rewrites it in the background, well inside the token's
# lifetime. Needs `permissions: id-token: write`, ARM_CLIENT_ID and ARM_TENANT_ID.
set -euo pipefail

token_file="${RUNNER_TEMP:?}/azure-federated-token"
refresh_seconds=240

fetch() {
  curl -fsS --retry 3 -H "Authorization: bearer ${ACTIONS_ID_TOKEN_REQUEST_TOKEN:?}" \
    "${ACTIONS_ID_TOKEN_REQUEST_URL:?}&audience=api://AzureADTokenExchange" | jq -er .value > "$token_file.new"
  mv "$token_file.new" "$token_file"
}

fetch
# Runs on in later steps of the job; GitHub ends it with the job.
(while sleep "$refresh_seconds"; do fetch || echo "::warning::could not refresh the federated token"; done) \
  >/dev/null 2>&1 &

{
  echo "AAD_LOGIN_METHOD=workloadidentity"
  echo "AZURE_FEDERATED_TOKEN_FILE=$token_file"
  echo "AZURE_CLIENT_ID=${ARM_CLIENT_ID:?}"
  echo "AZURE_TENANT_ID=${ARM_TENANT_ID:?}"
  echo "AZURE_AUTHORITY_HOST=https://login.microsoftonline.com/"
} >> "${GITHUB_ENV:?}"
