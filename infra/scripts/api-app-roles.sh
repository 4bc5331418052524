#!/usr/bin/env bash
# Least power for callers of the HTTP API behind App Service authentication (docs/security.md):
# add the app roles of infra/app/api-roles.json (one per capability) to the API's existing app
# registration, and give a caller one of them, for example a Logic App's managed identity.
# The same roles infra/main.bicep creates with createApiRegistration=true.
#
# Who can run it: adding roles needs an owner of the registration or an Entra role that may
# manage applications (Application Administrator, Cloud Application Administrator); assigning
# a role to a managed identity needs the same, or Privileged Role Administrator. It uses the
# Azure CLI's signed-in account and cloud. Safe to run again: present roles and assignments are
# reported, never duplicated.
#
# Usage:
#   infra/scripts/api-app-roles.sh --app-id <client id of the API registration>
#   infra/scripts/api-app-roles.sh --app-id <id> --assign Reset.Submit --principal-id <object id>
#   infra/scripts/api-app-roles.sh --app-id <id> --check    # report only; exit 3 when something is missing
# The principal id of a Logic App's system-assigned identity:
#   az logic workflow show --name <logic app> --resource-group <group> --query identity.principalId -o tsv
set -euo pipefail

readonly GUID_PATTERN='^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$'
readonly ROLES_FILE="$(cd "$(dirname "$0")/../app" && pwd)/api-roles.json"

app_id=""
assign_role=""
principal_id=""
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
    --app-id) app_id="${2:?--app-id needs a value}"; shift 2 ;;
    --assign) assign_role="${2:?--assign needs a role value}"; shift 2 ;;
    --principal-id) principal_id="${2:?--principal-id needs a value}"; shift 2 ;;
    --check) check_only=true; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

command -v az >/dev/null || die "the Azure CLI (az) is not installed: https://learn.microsoft.com/cli/azure/install-azure-cli"
command -v python3 >/dev/null || die "python3 is needed to read ${ROLES_FILE}"
[[ -n "$app_id" ]] || die "give --app-id, the client id of the API's app registration (azd env get-value AZURE_API_CLIENT_ID)"
[[ "$app_id" =~ $GUID_PATTERN ]] || die "'$app_id' is not a client id (a GUID)"
if [[ -n "$assign_role" || -n "$principal_id" ]]; then
  [[ -n "$assign_role" && -n "$principal_id" ]] || die "--assign and --principal-id go together"
  [[ "$principal_id" =~ $GUID_PATTERN ]] || die "'$principal_id' is not an object id (a GUID)"
fi
az account show --output none 2>/dev/null || die "not signed in: run 'az login' first"

role_id_of() {
  python3 -c 'import json,sys; print(next((r["id"] for r in json.load(open(sys.argv[1])) if r["value"] == sys.argv[2]), ""))' \
    "$ROLES_FILE" "$1"
}
if [[ -n "$assign_role" ]]; then
  role_id="$(role_id_of "$assign_role")"
  [[ -n "$role_id" ]] || die "'$assign_role' is not one of the app roles in ${ROLES_FILE}"
fi

graph_url="$(az cloud show --query endpoints.microsoftGraphResourceId --output tsv)"
graph_url="${graph_url%/}/v1.0"
missing=0

# 1. The roles on the registration: keep every existing one, add the missing ones.
app_object_id="$(az ad app show --id "$app_id" --query id --output tsv)"
existing_roles="$(az ad app show --id "$app_id" --query appRoles --output json)"
merged="$(python3 - "$ROLES_FILE" "$existing_roles" <<'PY'
import json, sys
wanted = json.load(open(sys.argv[1]))
existing = json.loads(sys.argv[2] or "[]")
have = {r["value"] for r in existing}
added = [
    {**r, "allowedMemberTypes": ["Application", "User"], "isEnabled": True}
    for r in wanted if r["value"] not in have
]
print(json.dumps({"added": [r["value"] for r in added], "appRoles": existing + added}))
PY
)"
added="$(python3 -c 'import json,sys; print(",".join(json.loads(sys.argv[1])["added"]))' "$merged")"
if [[ -z "$added" ]]; then
  echo "app roles present on ${app_id}"
elif [[ "$check_only" == true ]]; then
  echo "missing app roles on ${app_id}: ${added}" >&2
  missing=1
else
  body="$(python3 -c 'import json,sys; print(json.dumps({"appRoles": json.loads(sys.argv[1])["appRoles"]}))' "$merged")"
  az rest --method PATCH --output none --url "${graph_url}/applications/${app_object_id}" \
    --headers "Content-Type=application/json" --body "$body"
  echo "added app roles to ${app_id}: ${added}"
fi

# 2. One role for one caller.
if [[ -n "$assign_role" ]]; then
  api_sp_id="$(az ad sp show --id "$app_id" --query id --output tsv 2>/dev/null || true)"
  if [[ -z "$api_sp_id" ]]; then
    [[ "$check_only" == true ]] && die "the API has no service principal in this tenant yet"
    api_sp_id="$(az ad sp create --id "$app_id" --query id --output tsv)"
  fi
  existing="$(az rest --method GET --output tsv \
    --url "${graph_url}/servicePrincipals/${api_sp_id}/appRoleAssignedTo" \
    --query "value[?principalId=='${principal_id}' && appRoleId=='${role_id}'].id | [0]")"
  if [[ -n "$existing" ]]; then
    echo "already assigned: ${assign_role} to ${principal_id}"
  elif [[ "$check_only" == true ]]; then
    echo "missing: ${assign_role} for ${principal_id}" >&2
    missing=1
  else
    body="$(printf '{"principalId":"%s","resourceId":"%s","appRoleId":"%s"}' "$principal_id" "$api_sp_id" "$role_id")"
    az rest --method POST --output none --url "${graph_url}/servicePrincipals/${api_sp_id}/appRoleAssignedTo" \
      --headers "Content-Type=application/json" --body "$body"
    echo "assigned: ${assign_role} to ${principal_id}"
  fi
fi
[[ "$missing" -eq 0 ]] || exit 3
