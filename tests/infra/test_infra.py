"""Offline checks of infra/: every Bicep file parses, and the deployment keeps its security properties.

pycep (a pure-Python Bicep parser) checks syntax only; `az bicep build` remains the real
compile check on a connected machine. The parsed tree does not tell a string literal from an
identifier ('x' and x both read "x"), so literal values are also matched in the source text.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from pycep import BicepParser  # pycep-parser ships py.typed; pinned in requirements-infra.txt

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
APP = INFRA / "app"
MAIN = INFRA / "main.bicep"
API = APP / "api.bicep"
STORAGE = APP / "storage.bicep"
RBAC = APP / "rbac.bicep"
MONITORING = APP / "monitoring.bicep"
GRAPH_PERMISSION = APP / "graph-permission.bicep"
GRANT_SCRIPT = INFRA / "scripts" / "grant-graph-permission.sh"
API_REGISTRATION = APP / "api-registration.bicep"
API_ROLES = APP / "api-roles.json"
ROLES_SCRIPT = INFRA / "scripts" / "api-app-roles.sh"
LOCAL_SETTINGS_SAMPLE = ROOT / "local.settings.sample.json"
BASH = shutil.which("bash") or "/bin/bash"

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))
EXPECTED_BICEP_FILES = {
    "main.bicep",
    "app/api.bicep",
    "app/api-registration.bicep",
    "app/graph-permission.bicep",
    "app/identity.bicep",
    "app/monitoring.bicep",
    "app/observability.bicep",
    "app/rbac.bicep",
    "app/storage.bicep",
}

# The only Azure roles the deployment may assign (issue 4), by role definition id.
ALLOWED_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}

# Local-only names that must never be app settings in Azure.
LOCAL_ONLY_SETTINGS = {"AzureWebJobsStorage", "FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags"}
# Settings Flex Consumption rejects or ignores (runtime and scale live in functionAppConfig).
FLEX_UNSUPPORTED_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "FUNCTIONS_WORKER_PROCESS_COUNT",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_TIME_ZONE",
}

# Graph's published identity write quotas (learn.microsoft.com/graph/throttling-limits).
GRAPH_APP_TENANT_WRITES_PER_SECOND = 3000 / 150  # 3,000 writes per 2 min 30 s per app+tenant

Node = dict[str, Any]


@functools.cache
def _parser() -> BicepParser:
    return BicepParser()


@functools.cache
def tree(path: Path) -> Node:
    """Parsed Bicep file as plain dicts (pycep's TypedDicts, widened for lookups)."""
    return cast("Node", _parser().parse(text=path.read_text(encoding="utf-8")))


@functools.cache
def code(path: Path) -> str:
    """Source without comments, so that a word in a comment never satisfies or breaks a check."""
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"(?m)^\s*//.*$", "", text)
    return re.sub(r"(?m)\s//\s.*$", "", text)


def body(declaration: Node) -> Node:
    """The object literal of a resource or module, unwrapped from `if (...)` and `for` wrappers."""
    config = cast("Node", declaration["config"])
    while "config" in config and ("condition" in config or "loop_type" in config):
        config = cast("Node", config["config"])
    return config


def condition(declaration: Node) -> Any:
    """The `if (...)` condition of a resource or module, or None."""
    return cast("Node", declaration["config"]).get("condition")


def resources_of(path: Path, resource_type: str) -> dict[str, Node]:
    """Declared (not `existing`) resources of one type, by symbolic name."""
    found = tree(path).get("resources", {})
    return {name: res for name, res in found.items() if res["type"] == resource_type and not res["existing"]}


def only(path: Path, resource_type: str) -> Node:
    """Body of the single declared resource of this type in the file."""
    found = resources_of(path, resource_type)
    assert len(found) == 1, f"expected one {resource_type} in {path.name}, found {sorted(found)}"
    return body(next(iter(found.values())))


def app_settings() -> Node:
    """The function app's app settings object (the sites/config 'appsettings' resource)."""
    configs = [body(res) for res in resources_of(API, "Microsoft.Web/sites/config").values()]
    settings = [cfg["properties"] for cfg in configs if cfg["name"] == "appsettings"]
    assert len(settings) == 1, "api.bicep must declare exactly one sites/config 'appsettings'"
    return cast("Node", settings[0])


def literal(path: Path, key: str) -> list[str]:
    """Every single-quoted literal assigned to `key:` in the file's source."""
    return re.findall(rf"(?m)^\s*'?{re.escape(key)}'?\s*:\s*'([^']*)'\s*$", code(path))


def parameter(path: Path, name: str) -> Node:
    params = cast("Node", tree(path).get("parameters", {}))
    assert name in params, f"{path.name} must declare param {name}"
    return cast("Node", params[name])


def decorator(param: Node, kind: str) -> Any:
    for deco in param["decorators"]:
        if deco["type"] == kind:
            return deco["argument"]
    return None


def role_id_of(path: Path, assignment: Node) -> str:
    """Role definition GUID of a role assignment, following the variable it names."""
    role_definition = body(assignment)["properties"]["roleDefinitionId"]
    function = role_definition["function"]
    assert function["type"] == "subscription_resource_id", "roleDefinitionId must use subscriptionResourceId()"
    assert function["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"
    reference = function["parameters"]["resource_name_1"]
    variables = cast("Node", tree(path).get("variables", {}))
    return str(variables[reference]["value"]) if reference in variables else str(reference)


def all_role_assignments() -> list[tuple[Path, str, Node]]:
    return [
        (path, name, res)
        for path in BICEP_FILES
        for name, res in resources_of(path, "Microsoft.Authorization/roleAssignments").items()
    ]


def module_path(name: str) -> Path:
    module = tree(MAIN)["modules"][name]
    return (INFRA / str(module["detail"]["path"])).resolve()


# ---------------------------------------------------------------------------------------------
# Syntax and cross-file consistency (what `bicep build` would catch first)
# ---------------------------------------------------------------------------------------------


def test_infra_has_the_expected_bicep_files() -> None:
    """infra/ holds main.bicep and the app/ modules in the quickstart's shape."""
    assert {p.relative_to(INFRA).as_posix() for p in BICEP_FILES} == EXPECTED_BICEP_FILES


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_bicep_file_parses(path: Path) -> None:
    """Every .bicep file under infra/ is valid Bicep syntax."""
    parsed = tree(path)
    assert parsed.get("resources") or parsed.get("modules"), f"{path.name} declares nothing"


def test_modules_get_exactly_the_parameters_they_declare() -> None:
    """main.bicep passes each module only declared parameters, and every required one."""
    for name, module in tree(MAIN)["modules"].items():
        path = module_path(name)
        declared = cast("Node", tree(path).get("parameters", {}))
        passed = set(body(module).get("params", {}))
        required = {p for p, spec in declared.items() if "default" not in spec}
        assert passed <= set(declared), f"module {name} gets unknown params {passed - set(declared)}"
        assert required <= passed, f"module {name} misses required params {required - passed}"


def test_module_outputs_read_by_main_exist() -> None:
    """Every <module>.outputs.<name> that main.bicep reads is declared by that module."""
    for name, output in re.findall(r"\b(\w+)\.outputs\.(\w+)", code(MAIN)):
        outputs = tree(module_path(name)).get("outputs", {})
        assert output in outputs, f"main.bicep reads {name}.outputs.{output}, which {name} does not declare"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_no_unused_parameters_or_variables(path: Path) -> None:
    """Every declared parameter and variable is used (Bicep's no-unused-params/vars linter rules)."""
    parsed = tree(path)
    for name in [*parsed.get("parameters", {}), *parsed.get("variables", {})]:
        # Identifiers not preceded by `.` or a quote (property access), minus object keys.
        mentions = len(re.findall(rf"(?<![\w.']){re.escape(name)}\b", code(path)))
        keys = len(re.findall(rf"(?m)^\s*{re.escape(name)}:", code(path)))
        uses = mentions - keys
        assert uses >= 2, f"{path.name}: {name} is declared but never used"


def test_parameters_file_sets_only_main_parameters() -> None:
    """main.parameters.json sets only parameters of main.bicep, and every required one."""
    values = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    declared = cast("Node", tree(MAIN)["parameters"])
    required = {p for p, spec in declared.items() if "default" not in spec}
    assert set(values) <= set(declared), f"unknown parameters {set(values) - set(declared)}"
    assert required <= set(values), f"required parameters without a value {required - set(values)}"


def test_documented_azd_outputs_exist() -> None:
    """Every `azd env get-value X` in the README and scripts names an output of main.bicep."""
    outputs = set(tree(MAIN)["outputs"])
    used: set[str] = set()
    for path in [INFRA / "README.md", *sorted((INFRA / "scripts").glob("*.sh"))]:
        used |= set(re.findall(r"azd env get-value (\w+)", path.read_text(encoding="utf-8")))
    assert used, "the README should read azd outputs"
    assert used <= outputs, f"not outputs of main.bicep: {sorted(used - outputs)}"


def test_azure_yaml_service_matches_the_site_tag() -> None:
    """azure.yaml's function service `api` is the name the function app is tagged with."""
    azure_yaml = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    service = re.search(r"(?m)^services:\n  (\w+):\n((?:    .*\n)+)", azure_yaml)
    assert service, "azure.yaml must declare a service"
    assert service.group(1) == "api"
    assert re.search(r"(?m)^    host: function$", service.group(2))
    assert re.search(r"(?m)^    language: python$", service.group(2))
    assert parameter(API, "serviceName")["default"] == "api"
    assert re.search(r"'azd-service-name'\s*:\s*serviceName", code(API))


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------


def test_storage_account_refuses_shared_keys() -> None:
    """The storage account disables shared-key (and so SAS-by-key) access; Entra ID only."""
    props = only(STORAGE, "Microsoft.Storage/storageAccounts")["properties"]
    assert props["allowSharedKeyAccess"] is False
    assert props["defaultToOAuthAuthentication"] is True


def test_storage_account_requires_tls12_https_and_private_blobs() -> None:
    """Storage takes TLS 1.2+, https only, and no anonymous blob access on account or container."""
    props = only(STORAGE, "Microsoft.Storage/storageAccounts")["properties"]
    assert literal(STORAGE, "minimumTlsVersion") == ["TLS1_2"]
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["allowBlobPublicAccess"] is False
    assert literal(STORAGE, "publicAccess") == ["None"]


def test_storage_creates_the_app_queues_table_and_containers() -> None:
    """The request, poison and result queues, the status table and both containers are created."""
    assert parameter(MAIN, "requestQueueName")["default"] == "guest-reset-requests"
    assert parameter(MAIN, "resultQueueName")["default"] == "guest-reset-results"
    assert parameter(MAIN, "statusTableName")["default"] == "GuestResetStatus"
    assert tree(MAIN)["variables"]["poisonQueueName"]["value"] == "${requestQueueName}-poison"
    assert tree(MAIN)["variables"]["bulkContainerName"]["value"] == "bulk-resets"

    params = body(tree(MAIN)["modules"]["storage"])["params"]
    assert params["queueNames"] == ["requestQueueName", "poisonQueueName", "resultQueueName", "callbackQueueName"]
    assert params["tableNames"] == ["statusTableName", "stateTableName"]
    assert params["containerNames"] == ["deploymentStorageContainerName", "bulkContainerName"]

    for resource_type, array in [
        ("Microsoft.Storage/storageAccounts/queueServices/queues", "queueNames"),
        ("Microsoft.Storage/storageAccounts/tableServices/tables", "tableNames"),
        ("Microsoft.Storage/storageAccounts/blobServices/containers", "containerNames"),
    ]:
        (declaration,) = resources_of(STORAGE, resource_type).values()
        assert declaration["config"]["loop_type"]["detail"]["array_name"] == array


# ---------------------------------------------------------------------------------------------
# Function app
# ---------------------------------------------------------------------------------------------


def test_function_app_runs_python_312_on_flex_consumption() -> None:
    """The app is a Linux Flex Consumption (FC1) function app running Python 3.12."""
    plan = only(API, "Microsoft.Web/serverfarms")
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True

    site = only(API, "Microsoft.Web/sites")
    assert literal(API, "kind") == ["functionapp", "functionapp,linux"]
    config = site["properties"]["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.12"}
    assert literal(API, "version") == ["3.12"]
    assert config["scaleAndConcurrency"]["maximumInstanceCount"] == "maximumInstanceCount"
    deployment = config["deployment"]["storage"]
    assert deployment["type"] == "blobContainer"
    assert deployment["authentication"]["type"] == "UserAssignedIdentity"


def test_function_app_is_https_only_with_ftp_and_publishing_passwords_off() -> None:
    """https only, TLS 1.2, FTP(S) disabled and no basic-auth publishing credentials."""
    site = only(API, "Microsoft.Web/sites")
    assert site["properties"]["httpsOnly"] is True
    assert literal(API, "ftpsState") == ["Disabled"]
    assert literal(API, "minTlsVersion") == ["1.2"]
    assert literal(API, "scmMinTlsVersion") == ["1.2"]

    policies = resources_of(API, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {body(p)["name"] for p in policies.values()} == {"ftp", "scm"}
    assert all(body(p)["properties"]["allow"] is False for p in policies.values())
    assert all(condition(p) is None for p in policies.values())


def test_function_app_uses_only_its_user_assigned_identity() -> None:
    """The app has the user-assigned identity and no system-assigned one."""
    assert only(API, "Microsoft.Web/sites")["identity"]["type"] == "UserAssigned"


def test_host_storage_connects_with_the_managed_identity() -> None:
    """AzureWebJobsStorage uses the managed identity and service URIs, never a connection string."""
    settings = app_settings()
    assert literal(API, "AzureWebJobsStorage__credential") == ["managedidentity"]
    assert settings["AzureWebJobsStorage__clientId"] == "identityClientId"
    assert settings["AZURE_CLIENT_ID"] == "identityClientId"
    for service in ("blob", "queue", "table"):
        uri = settings[f"AzureWebJobsStorage__{service}ServiceUri"]
        assert uri == f"https://${{storage.name}}.{service}.${{environment().suffixes.storage}}"


def test_app_settings_hold_no_local_only_or_flex_unsupported_names() -> None:
    """No plain AzureWebJobsStorage, FUNCTIONS_WORKER_RUNTIME or other setting Flex rejects."""
    forbidden = LOCAL_ONLY_SETTINGS | FLEX_UNSUPPORTED_SETTINGS
    assert not set(app_settings()) & forbidden
    for path in BICEP_FILES:
        for name in sorted(forbidden):
            assert not re.search(rf"\b{name}\b(?!__)", code(path)), f"{name} appears in {path.name}"


def test_infra_never_reads_keys_or_connection_strings() -> None:
    """No Bicep file lists keys, builds a key-based connection string or issues a SAS."""
    forbidden = re.compile(
        r"listKeys|listConnectionStrings|listAccountSas|listServiceSas|AccountKey|"
        r"SharedAccessKey|SharedAccessSignature|DefaultEndpointsProtocol|InstrumentationKey",
        re.IGNORECASE,
    )
    for path in BICEP_FILES:
        assert not forbidden.search(code(path)), f"{path.name} handles a key: {forbidden.search(code(path))}"
    # App Insights' connection string names the resource; with local auth off it grants nothing.
    assert app_settings()["APPLICATIONINSIGHTS_CONNECTION_STRING"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "applicationInsights",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "properties", "operand_2": "ConnectionString"},
                    }
                },
            },
        }
    }


def test_app_settings_cover_local_settings_sample() -> None:
    """Every setting in local.settings.sample.json, bar the local-only ones, is set in Azure."""
    assert LOCAL_SETTINGS_SAMPLE.is_file(), (
        f"{LOCAL_SETTINGS_SAMPLE.name} is missing at the repo root: it lists every app setting the "
        "code reads, and this test checks that infra/app/api.bicep sets each of them"
    )
    sample = json.loads(LOCAL_SETTINGS_SAMPLE.read_text(encoding="utf-8"))
    names = set(sample["Values"]) - LOCAL_ONLY_SETTINGS
    missing = sorted(names - set(app_settings()))
    assert not missing, f"app settings read by the code but not set by infra/app/api.bicep: {missing}"


def test_graph_base_url_is_limited_to_national_cloud_endpoints() -> None:
    """GRAPH_BASE_URL can only be one of Microsoft Graph's national-cloud endpoints."""
    allowed = decorator(parameter(MAIN, "graphBaseUrl"), "allowed")
    assert set(allowed) == {
        "https://graph.microsoft.com/v1.0",
        "https://graph.microsoft.us/v1.0",
        "https://dod-graph.microsoft.us/v1.0",
        "https://microsoftgraph.chinacloudapi.cn/v1.0",
    }
    assert app_settings()["GRAPH_BASE_URL"] == "graphBaseUrl"


# ---------------------------------------------------------------------------------------------
# Monitoring
# ---------------------------------------------------------------------------------------------


def test_monitoring_disables_local_auth() -> None:
    """Application Insights and Log Analytics accept Entra-authenticated ingestion only."""
    insights = only(MONITORING, "Microsoft.Insights/components")["properties"]
    assert insights["DisableLocalAuth"] is True
    workspace = only(MONITORING, "Microsoft.OperationalInsights/workspaces")["properties"]
    assert workspace["features"]["disableLocalAuth"] is True
    assert app_settings()["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${identityClientId};Authorization=AAD"
    )


# ---------------------------------------------------------------------------------------------
# Azure RBAC
# ---------------------------------------------------------------------------------------------


def test_role_assignments_use_only_the_four_listed_roles() -> None:
    """Only Blob Data Owner, Queue/Table Data Contributor and Metrics Publisher are assigned."""
    assignments = all_role_assignments()
    assert assignments, "no role assignments found"
    assigned = {role_id_of(path, res) for path, _, res in assignments}
    assert assigned <= set(ALLOWED_ROLES), f"unexpected roles {assigned - set(ALLOWED_ROLES)}"

    to_identity = {
        role_id_of(path, res)
        for path, _, res in assignments
        if body(res)["properties"]["principalId"] == "identityPrincipalId"
    }
    assert to_identity == set(ALLOWED_ROLES), "the app's identity needs each of the four roles"


def test_role_ids_are_commented_variables() -> None:
    """Each role definition id is a variable whose comment names the role."""
    source = RBAC.read_text(encoding="utf-8")
    declared = dict(re.findall(r"(?m)^var \w+RoleId = '([0-9a-f-]{36})' // (.+)$", source))
    assert declared == ALLOWED_ROLES


def test_role_assignment_names_are_deterministic_guids() -> None:
    """Role assignment names are guid(scope, principal, role), so redeploys update, not duplicate."""
    for path, name, res in all_role_assignments():
        config = body(res)
        function = config["name"]["function"]
        assert function["type"] == "guid", f"{name} in {path.name} is not named with guid()"
        seeds = list(function["parameters"].values())
        role_variable = config["properties"]["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]
        assert config["properties"]["principalId"] in seeds, f"{name}: guid() lacks the principal"
        assert role_variable in seeds, f"{name}: guid() lacks the role"


def test_role_assignments_are_scoped_to_single_resources() -> None:
    """Each role assignment is scoped to the storage account, one container or App Insights, never wider."""
    for path, name, res in all_role_assignments():
        scope = body(res).get("scope")
        resource = tree(path)["resources"].get(scope) if isinstance(scope, str) else None
        assert resource is not None, f"{name} in {path.name} has no resource scope"
        assert resource["type"] in {
            "Microsoft.Storage/storageAccounts",
            "Microsoft.Storage/storageAccounts/blobServices/containers",
            "Microsoft.Insights/components",
        }


def test_people_get_blob_access_only_on_the_bulk_container() -> None:
    """The deployer and the optional uploader group may upload CSV files: blob data on bulk-resets only."""
    resources = tree(RBAC)["resources"]
    container = resources["bulkContainer"]
    assert container["existing"] and body(container)["name"] == "bulkContainerName"
    blob_owner = "b7e6dc6d-f1e8-4753-8033-0f276bb0955b"
    people: dict[str, Any] = {}
    for name, res in resources_of(RBAC, "Microsoft.Authorization/roleAssignments").items():
        principal = body(res)["properties"]["principalId"]
        if principal == "identityPrincipalId":
            continue
        assert condition(res) is not None, f"{name}: an assignment to a person must be optional"
        if role_id_of(RBAC, res) == blob_owner:
            assert body(res)["scope"] == "bulkContainer", f"{name}: blob access for people only on the bulk container"
            people[principal] = res
    assert set(people) == {"userPrincipalId", "bulkUploaderPrincipalId"}
    same_principal_guard = "bulkUploaderPrincipalId != userPrincipalId"  # no two assignments with one name
    assert same_principal_guard in code(RBAC)
    rbac = tree(MAIN)["modules"]["rbac"]
    assert body(rbac)["params"]["bulkContainerName"] == "bulkContainerName"
    assert body(rbac)["params"]["bulkUploaderPrincipalId"] == "bulkUploaderPrincipalId"


# ---------------------------------------------------------------------------------------------
# Microsoft Graph permission, App Service authentication, scale
# ---------------------------------------------------------------------------------------------


GRAPH_PERMISSIONS = ("User.ReadWrite.All", "RoleManagement.Read.Directory")


def test_graph_permissions_are_granted_behind_a_bool_parameter() -> None:
    """The identity gets Graph's User.ReadWrite.All and RoleManagement.Read.Directory, only when
    grantGraphPermission is true."""
    grant_parameter = parameter(MAIN, "grantGraphPermission")
    assert grant_parameter["type"] == "bool"
    assert grant_parameter["default"] is False
    module = tree(MAIN)["modules"]["graphPermission"]
    assert condition(module) == "grantGraphPermission"
    assert module_path("graphPermission") == GRAPH_PERMISSION
    assert body(module)["params"]["principalId"] == {
        "operator": {
            "type": "property_accessor",
            "operands": {
                "operand_1": "identity",
                "operand_2": {
                    "operator": {
                        "type": "property_accessor",
                        "operands": {"operand_1": "outputs", "operand_2": "principalId"},
                    }
                },
            },
        }
    }

    graph = tree(GRAPH_PERMISSION)
    assert "microsoftGraphV1" in graph["extensions"]
    config = json.loads((ROOT / "bicepconfig.json").read_text(encoding="utf-8"))
    assert config["extensions"]["microsoftGraphV1"].startswith(
        "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:"
    )
    values = re.search(r"(?ms)^var appRoleValues = \[(.*?)^\]$", code(GRAPH_PERMISSION))
    assert values is not None and re.findall(r"'([^']+)'", values.group(1)) == list(GRAPH_PERMISSIONS)
    assert re.search(r"(?m)^var graphAppId = '00000003-0000-0000-c000-000000000000'$", code(GRAPH_PERMISSION))
    (assignment,) = resources_of(GRAPH_PERMISSION, "Microsoft.Graph/appRoleAssignedTo").values()
    assert body(assignment) is not assignment["config"], "one assignment per permission (a for loop)"
    assert set(body(assignment)) == {"resourceId", "appRoleId", "principalId"}
    assert body(assignment)["principalId"] == "principalId"


def test_no_other_graph_permission_is_named() -> None:
    """The app's two permissions are the only Graph permissions the infra or the grant script name."""
    permission = re.compile(r"\b[A-Z][A-Za-z]+\.[A-Z][A-Za-z]+(?:\.[A-Z][A-Za-z]+)*\.(?:All|Directory)\b")
    for path in [*BICEP_FILES, GRANT_SCRIPT]:
        assert set(permission.findall(code(path))) <= set(GRAPH_PERMISSIONS), path.name


def test_app_service_auth_is_optional_behind_a_bool_parameter() -> None:
    """Entra ID sign-in for the HTTP API is off by default, returns 401 when on, and gates ALLOWED_CALLERS."""
    assert parameter(MAIN, "enableAppServiceAuth")["default"] is False
    (auth,) = [
        res for res in resources_of(API, "Microsoft.Web/sites/config").values() if body(res)["name"] == "authsettingsV2"
    ]
    assert condition(auth) == "enableAppServiceAuth"
    props = body(auth)["properties"]
    assert props["globalValidation"]["requireAuthentication"] is True
    # The app trusts caller headers only with ALLOWED_CALLERS set; only Easy Auth makes them real.
    assert app_settings()["ALLOWED_CALLERS"] == {
        "operator": {
            "type": "conditional",
            "operands": {"condition": "enableAppServiceAuth", "true_value": "allowedCallers", "false_value": ""},
        }
    }
    assert literal(API, "unauthenticatedClientAction") == ["Return401"]
    assert props["identityProviders"]["azureActiveDirectory"]["enabled"] is True
    assert props["httpSettings"]["requireHttps"] is True


def test_default_write_budget_stays_within_graph_app_write_quota() -> None:
    """GRAPH_WRITES_PER_SECOND is app-wide (shared through the state table), so the default alone must fit
    Graph's 3,000 writes per 150 s with its burst, whatever maximumInstanceCount is; no per-worker workaround."""
    max_instances = parameter(MAIN, "maximumInstanceCount")
    assert decorator(max_instances, "min_value") == 40  # Flex rejects lower limits
    budget = float(parameter(MAIN, "graphWritesPerSecond")["default"])
    burst = int(parameter(MAIN, "graphWriteBurst")["default"])
    assert 0 < budget < GRAPH_APP_TENANT_WRITES_PER_SECOND
    assert burst + budget * 150 <= 3000 * 0.95  # any 150 s window, with room to spare
    assert "per worker" not in str(parameter(MAIN, "graphWritesPerSecond").get("decorators", ""))

    # azd's parameter file defaults must not quietly raise it.
    values = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))["parameters"]
    assert values["maximumInstanceCount"]["value"] == f"${{MAXIMUM_INSTANCE_COUNT={max_instances['default']}}}"
    assert values["graphWritesPerSecond"]["value"] == f"${{GRAPH_WRITES_PER_SECOND={budget:g}}}"
    assert app_settings()["GRAPH_WRITES_PER_SECOND"] == "graphWritesPerSecond"
    assert app_settings()["RESET_STATE_TABLE"] == "stateTableName"


# ---------------------------------------------------------------------------------------------
# Scripts
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((INFRA / "scripts").glob("*.sh")), ids=lambda p: p.name)
def test_scripts_are_strict_executable_bash(path: Path) -> None:
    """Scripts are executable bash with `set -euo pipefail` and no syntax errors."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert re.search(r"(?m)^set -euo pipefail$", text)
    assert path.stat().st_mode & stat.S_IXUSR, f"chmod +x {path}"
    subprocess.run([BASH, "-n", str(path)], check=True)


FAKE_AZ = """#!{python}
# Stand-in for the Azure CLI: answers the grant script's calls and logs them.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
joined = " ".join(args)
if args[:2] == ["account", "show"]:
    sys.exit(0)
if args[:2] == ["cloud", "show"]:
    print("https://graph.microsoft.com/")
elif args[:3] == ["ad", "sp", "show"]:
    print("graph-sp-id" if "--query id" in joined else "role-id")
elif args[:3] == ["rest", "--method", "GET"]:
    print(os.environ.get("FAKE_EXISTING_ASSIGNMENT", ""))
elif args[:3] == ["rest", "--method", "POST"]:
    pass
else:
    sys.exit("unexpected az call: " + joined)
"""

PRINCIPAL = "11111111-2222-3333-4444-555555555555"


def run_grant_script(tmp_path: Path, existing: str, *args: str) -> tuple[int, list[list[str]]]:
    """Run grant-graph-permission.sh against the fake az; return its exit code and az calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "az"
    fake.write_text(FAKE_AZ.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    log = tmp_path / "az.log"
    log.write_text("", encoding="utf-8")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{Path(BASH).parent}{os.pathsep}/usr/bin:/bin",
        "FAKE_AZ_LOG": str(log),
        "FAKE_EXISTING_ASSIGNMENT": existing,
    }
    result = subprocess.run([BASH, str(GRANT_SCRIPT), *args], env=env, capture_output=True, text=True, check=False)
    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return result.returncode, calls


def test_grant_script_posts_each_app_role_once_when_missing(tmp_path: Path) -> None:
    """Without existing grants, the script posts one appRoleAssignedTo per permission the app needs."""
    code_, calls = run_grant_script(tmp_path, "", "--principal-id", PRINCIPAL)
    assert code_ == 0
    posts = [call for call in calls if call[:3] == ["rest", "--method", "POST"]]
    assert len(posts) == len(GRAPH_PERMISSIONS)
    post = posts[0]
    assert post[post.index("--url") + 1] == (
        "https://graph.microsoft.com/v1.0/servicePrincipals/graph-sp-id/appRoleAssignedTo"
    )
    assert json.loads(post[post.index("--body") + 1]) == {
        "principalId": PRINCIPAL,
        "resourceId": "graph-sp-id",
        "appRoleId": "role-id",
    }
    role_queries = " ".join(" ".join(call) for call in calls if call[:3] == ["ad", "sp", "show"])
    for permission in GRAPH_PERMISSIONS:
        assert f"appRoles[?value=='{permission}'" in role_queries


def test_grant_script_is_idempotent(tmp_path: Path) -> None:
    """With the grant already in place, the script posts nothing and succeeds."""
    code_, calls = run_grant_script(tmp_path, "existing-assignment-id", "--principal-id", PRINCIPAL)
    assert code_ == 0
    assert not [call for call in calls if call[:3] == ["rest", "--method", "POST"]]


def test_grant_script_check_mode_reports_a_missing_grant(tmp_path: Path) -> None:
    """--check changes nothing and exits 3 when the grant is missing."""
    code_, calls = run_grant_script(tmp_path, "", "--principal-id", PRINCIPAL, "--check")
    assert code_ == 3
    assert not [call for call in calls if call[:3] == ["rest", "--method", "POST"]]


def test_grant_script_rejects_a_principal_that_is_not_a_guid(tmp_path: Path) -> None:
    """A principal id that is not a GUID is refused before any Graph call."""
    code_, calls = run_grant_script(tmp_path, "", "--principal-id", "x/../../me")
    assert code_ == 1
    assert not [call for call in calls if call[0] == "rest"]


# ---------------------------------------------------------------------------------------------
# Least power: app roles for callers behind Entra ID, safe defaults for everyone else
# ---------------------------------------------------------------------------------------------


def test_app_roles_are_exactly_the_apps_capabilities() -> None:
    """api-roles.json holds one role per capability the app reads from a token, with fixed ids."""
    from shared.platform.settings import Capability

    roles = json.loads(API_ROLES.read_text(encoding="utf-8"))
    assert [r["value"] for r in roles] == [c.value for c in Capability]
    ids = [r["id"] for r in roles]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)
    assert all(r["displayName"] and r["description"] for r in roles)


def test_the_api_registration_declares_the_roles_and_requires_an_assignment() -> None:
    """Only principals given a role get a token for the API; the module runs only when asked."""
    source = code(API_REGISTRATION)
    assert "loadJsonContent('api-roles.json')" in source
    (application,) = resources_of(API_REGISTRATION, "Microsoft.Graph/applications").values()
    assert body(application)["signInAudience"] == "AzureADMyOrg"
    (principal,) = resources_of(API_REGISTRATION, "Microsoft.Graph/servicePrincipals").values()
    assert body(principal)["appRoleAssignmentRequired"] is True
    module = tree(MAIN)["modules"]["apiRegistration"]
    assert module_path("apiRegistration") == API_REGISTRATION
    assert "enableAppServiceAuth && createApiRegistration" in code(MAIN)
    assert condition(module) is not None
    assert parameter(MAIN, "createApiRegistration")["default"] is False


def test_entra_id_in_front_makes_the_app_require_a_principal() -> None:
    assert app_settings()["REQUIRE_ENTRA_ID"] == {
        "operator": {
            "type": "conditional",
            "operands": {"condition": "enableAppServiceAuth", "true_value": "true", "false_value": "false"},
        }
    }


def test_least_power_settings_default_to_the_safe_values() -> None:
    """No capability beyond the code's safe default, no custom body, records kept 30 days."""
    for name in ("keyCapabilities", "queueCapabilities", "redirectAllowedUrls"):
        assert parameter(MAIN, name)["default"] == "", name
    assert parameter(MAIN, "allowCustomMessageBody")["default"] is False
    assert parameter(MAIN, "retentionDays")["default"] == 30
    assert parameter(MAIN, "redeemUrlHours")["default"] == 72


FAKE_AZ_ROLES = """#!{python}
# Stand-in for the Azure CLI: answers api-app-roles.sh and logs its calls.
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_AZ_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
joined = " ".join(args)
if args[:2] == ["account", "show"]:
    sys.exit(0)
if args[:2] == ["cloud", "show"]:
    print("https://graph.microsoft.com/")
elif args[:3] == ["ad", "app", "show"]:
    print("app-object-id" if "--query id" in joined else os.environ.get("FAKE_APP_ROLES", "[]"))
elif args[:3] == ["ad", "sp", "show"]:
    print("api-sp-id")
elif args[:3] == ["rest", "--method", "GET"]:
    print(os.environ.get("FAKE_EXISTING_ASSIGNMENT", ""))
elif args[:3] == ["rest", "--method", "PATCH"] or args[:3] == ["rest", "--method", "POST"]:
    pass
else:
    sys.exit("unexpected az call: " + joined)
"""
API_APP_ID = "22222222-3333-4444-5555-666666666666"


def run_roles_script(tmp_path: Path, *args: str, roles: str = "[]", existing: str = "") -> tuple[int, list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "az"
    fake.write_text(FAKE_AZ_ROLES.format(python=sys.executable), encoding="utf-8")
    fake.chmod(0o755)
    log = tmp_path / "az.log"
    log.write_text("", encoding="utf-8")
    python_dir = Path(sys.executable).parent
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{python_dir}{os.pathsep}{Path(BASH).parent}{os.pathsep}/usr/bin:/bin",
        "FAKE_AZ_LOG": str(log),
        "FAKE_APP_ROLES": roles,
        "FAKE_EXISTING_ASSIGNMENT": existing,
    }
    result = subprocess.run([BASH, str(ROLES_SCRIPT), *args], env=env, capture_output=True, text=True, check=False)
    calls = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return result.returncode, calls


def _sent(calls: list[list[str]], method: str) -> list[dict[str, Any]]:
    return [json.loads(c[c.index("--body") + 1]) for c in calls if c[:3] == ["rest", "--method", method]]


def test_roles_script_adds_the_missing_roles_and_keeps_the_others(tmp_path: Path) -> None:
    """A registration with one unrelated role and one of ours gets the other five, nothing removed."""
    ours = json.loads(API_ROLES.read_text(encoding="utf-8"))
    present = [{"value": "Other.Role", "id": "x"}, {**ours[0], "allowedMemberTypes": ["Application"]}]
    code_, calls = run_roles_script(tmp_path, "--app-id", API_APP_ID, roles=json.dumps(present))
    assert code_ == 0
    [patch] = _sent(calls, "PATCH")
    values = [r["value"] for r in patch["appRoles"]]
    assert values[:2] == ["Other.Role", ours[0]["value"]] and values[2:] == [r["value"] for r in ours[1:]]


def test_roles_script_is_idempotent(tmp_path: Path) -> None:
    roles = API_ROLES.read_text(encoding="utf-8")
    code_, calls = run_roles_script(tmp_path, "--app-id", API_APP_ID, roles=roles)
    assert code_ == 0 and _sent(calls, "PATCH") == []


def test_roles_script_assigns_one_role_to_a_logic_apps_identity_once(tmp_path: Path) -> None:
    """--assign posts one appRoleAssignedTo with the role's fixed id; an existing one is left alone."""
    roles = API_ROLES.read_text(encoding="utf-8")
    switch_id = next(r["id"] for r in json.loads(roles) if r["value"] == "Reset.SwitchEmail")
    args = ("--app-id", API_APP_ID, "--assign", "Reset.SwitchEmail", "--principal-id", PRINCIPAL)
    code_, calls = run_roles_script(tmp_path, *args, roles=roles)
    assert code_ == 0
    assert _sent(calls, "POST") == [{"principalId": PRINCIPAL, "resourceId": "api-sp-id", "appRoleId": switch_id}]
    code_, calls = run_roles_script(tmp_path, *args, roles=roles, existing="assignment-id")
    assert code_ == 0 and _sent(calls, "POST") == []


def test_roles_script_check_mode_and_bad_input(tmp_path: Path) -> None:
    """--check changes nothing and exits 3 when roles are missing; unknown roles and ids are refused."""
    code_, calls = run_roles_script(tmp_path, "--app-id", API_APP_ID, "--check")
    assert code_ == 3 and _sent(calls, "PATCH") == []
    assert run_roles_script(tmp_path, "--app-id", "not-a-guid")[0] == 1
    bad_role = ("--app-id", API_APP_ID, "--assign", "Reset.Everything", "--principal-id", PRINCIPAL)
    code_, calls = run_roles_script(tmp_path, *bad_role)
    assert code_ == 1 and not [c for c in calls if c[0] == "rest"]
