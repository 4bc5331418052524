#!/usr/bin/env bash
# Grant the function app's managed identity the Microsoft Graph application permissions it needs:
# User.ReadWrite.All (users and the reset itself) and RoleManagement.Read.Directory (the role
# check). The same grants infra/main.bicep makes when grantGraphPermission=true, for teams where
# a directory administrator grants permissions apart from the deployment.
#
# Who can run it: a user holding the Microsoft Entra role Privileged Role Administrator (or
# Global Administrator). Application Administrator and Cloud Application Administrator can
# grant application permissions of other APIs, but not Microsoft Graph's.
# It uses the Azure CLI's signed-in account and cloud (run `az cloud set --name
# AzureUSGovernment` or `AzureChinaCloud` first for those clouds). Safe to run again: an
# existing grant is reported, never duplicated.
#
# Usage:
#   infra/scripts/grant-graph-permission.sh                   # identity from the azd environment
#   infra/scripts/grant-graph-permission.sh --principal-id <object id of the identity>
#   infra/scripts/grant-graph-permission.sh --identity-name <name> --resource-group <group>
#   infra/scripts/grant-graph-permission.sh --check           # report only; exit 3 when one is missing
set -euo pipefail

readonly GRAPH_APP_ID="00000003-0000-0000-c000-000000000000" # Microsoft Graph, every tenant
readonly APP_ROLES=("User.ReadWrite.All" "RoleManagement.Read.Directory")
readonly GUID_PATTERN='^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$'

principal_id=""
identity_name=""
resource_group=""
check_only=false

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed -E 's/^# ?//'
}

die() {
  echo "error: $*" >&2
  exit 1
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --principal-id) principal_id="${2:?--principal-id needs a value}"; shift 2 ;;
    --identity-name) identity_name="${2:?--identity-name needs a value}"; shift 2 ;;
    --resource-group) resource_group="${2:?--resource-group needs a value}"; shift 2 ;;
    --check) check_only=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v az >/dev/null || die "the Azure CLI (az) is not installed: https://learn.microsoft.com/cli/azure/install-azure-cli"
az account show --output none 2>/dev/null || die "not signed in: run 'az login' as a Privileged Role Administrator first"

if [[ -z "$principal_id" && -n "$identity_name" ]]; then
  [[ -n "$resource_group" ]] || die "--identity-name needs --resource-group"
  principal_id="$(az identity show --name "$identity_name" --resource-group "$resource_group" --query principalId --output tsv)"
fi
if [[ -z "$principal_id" ]] && command -v azd >/dev/null; then
  principal_id="$(azd env get-value AZURE_MANAGED_IDENTITY_PRINCIPAL_ID 2>/dev/null || true)"
fi
[[ -n "$principal_id" ]] || die "no identity given: pass --principal-id, or --identity-name with --resource-group, or run it in the azd project after 'azd provision'"
[[ "$principal_id" =~ $GUID_PATTERN ]] || die "'$principal_id' is not an object id (a GUID)"

graph_url="$(az cloud show --query endpoints.microsoftGraphResourceId --output tsv)"
graph_url="${graph_url%/}/v1.0"

graph_sp_id="$(az ad sp show --id "$GRAPH_APP_ID" --query id --output tsv)"

missing=0
for app_role in "${APP_ROLES[@]}"; do
  app_role_id="$(az ad sp show --id "$GRAPH_APP_ID" --output tsv \
    --query "appRoles[?value=='${app_role}' && contains(allowedMemberTypes, 'Application')].id | [0]")"
  [[ -n "$app_role_id" ]] || die "Microsoft Graph offers no application permission ${app_role} in this tenant"

  existing="$(az rest --method GET --output tsv \
    --url "${graph_url}/servicePrincipals/${principal_id}/appRoleAssignments" \
    --query "value[?appRoleId=='${app_role_id}' && resourceId=='${graph_sp_id}'].id | [0]")"

  if [[ -n "$existing" ]]; then
    echo "already granted: ${app_role} on Microsoft Graph to ${principal_id} (assignment ${existing})"
    continue
  fi
  if [[ "$check_only" == true ]]; then
    echo "missing: ${app_role} on Microsoft Graph for ${principal_id}" >&2
    missing=$((missing + 1))
    continue
  fi

  body="$(printf '{"principalId":"%s","resourceId":"%s","appRoleId":"%s"}' "$principal_id" "$graph_sp_id" "$app_role_id")"
  if ! output="$(az rest --method POST --output none \
    --url "${graph_url}/servicePrincipals/${graph_sp_id}/appRoleAssignedTo" \
    --headers "Content-Type=application/json" --body "$body" 2>&1)"; then
    echo "$output" >&2
    if grep -q -E "Authorization_RequestDenied|Forbidden|Insufficient privileges" <<<"$output"; then
      die "permission denied: granting a Microsoft Graph application permission needs the Entra role Privileged Role Administrator (or Global Administrator)"
    fi
    die "the grant of ${app_role} failed (a brand-new identity can take a minute to replicate: run the script again)"
  fi
  echo "granted: ${app_role} on Microsoft Graph to ${principal_id}"
done

if [[ "$missing" -gt 0 ]]; then
  exit 3
fi
