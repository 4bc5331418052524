// Guest Redemption Reset on Flex Consumption: one resource group holding the function app,
// its user-assigned identity, identity-only storage (queues, table, containers) and monitoring.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds the resource token used in every resource name.')
param environmentName string

@minLength(1)
@description('Region for every resource. It must offer Flex Consumption: az functionapp list-flexconsumption-locations.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the user or pipeline running azd. When set, it may send requests to the request queue and read the results queue and status table (for the first dry run), and upload bulk CSV files. Leave empty in production.')
param principalId string = ''

@description('Object id of a user or group (the identity team) who may upload bulk CSV files into bulk-resets/incoming/ and read the reports; empty = only the deployer.')
param bulkUploaderPrincipalId string = ''

// Optional name overrides; empty means abbreviation + resource token.
param resourceGroupName string = ''
param functionAppName string = ''
param appServicePlanName string = ''
param identityName string = ''
param storageAccountName string = ''
param logAnalyticsName string = ''
param applicationInsightsName string = ''

// ---------------------------------------------------------------------------------------------
// Scale and the Graph write budget. The budget is app-wide: every instance draws its write
// slots from one schedule in the state table, so it holds whatever maximumInstanceCount is
// (docs/operations.md, "The Graph write budget").
// ---------------------------------------------------------------------------------------------
@minValue(40)
@maxValue(1000)
@description('Flex Consumption instance limit per function group (the queue worker scales in its own group). 40 is the lowest value Flex accepts.')
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
@description('Memory per instance in MB.')
param instanceMemoryMB int = 2048

@description('GRAPH_WRITES_PER_SECOND: Graph writes per second for the whole app, all instances together (a positive decimal). 18 keeps 10% under Graph\'s 3,000 writes per 150 s per app and tenant.')
param graphWritesPerSecond string = '18'

@minValue(1)
@description('GRAPH_WRITE_BURST: writes the app may send at once after an idle spell, before the per-second pace applies.')
param graphWriteBurst int = 15

@description('GRAPH_RETRY_DELAYS: seconds between Graph retries, comma separated (Retry-After wins when Graph sends it).')
param graphRetryDelays string = '1,2,4,8'

@minValue(1)
@description('GRAPH_MAX_ATTEMPTS: attempts per Graph call, the first one included.')
param graphMaxAttempts int = 5

@minValue(1)
@description('GRAPH_TIMEOUT_SECONDS: timeout of one Graph request.')
param graphTimeoutSeconds int = 30

// ---------------------------------------------------------------------------------------------
// Behaviour of the reset (app settings of the same names).
// ---------------------------------------------------------------------------------------------
@allowed([
  'https://graph.microsoft.com/v1.0'
  'https://graph.microsoft.us/v1.0'
  'https://dod-graph.microsoft.us/v1.0'
  'https://microsoftgraph.chinacloudapi.cn/v1.0'
])
@description('GRAPH_BASE_URL: Microsoft Graph endpoint of the tenant\'s cloud (global, US Gov L4, US Gov L5 DoD, China).')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('INVITE_REDIRECT_URL: where a guest lands after redeeming the new invitation. Empty: the cloud\'s My Apps portal opened in this tenant (https://myapps.microsoft.com?tenantId=<tenant> in the global cloud).')
param inviteRedirectUrl string = ''

@allowed([
  'transitive'
  'direct'
])
@description('ROLE_CHECK: transitive reads Graph beta transitiveRoleAssignments (direct and group-held roles); direct reads v1.0 roleAssignments (direct roles only). docs/graph.md explains the choice.')
param roleCheck string = 'transitive'

@minValue(0)
@maxValue(120)
@description('REPLICATION_WAIT_SECONDS: how long a reset waits for its own email switch to read back before inviting.')
param replicationWaitSeconds int = 30

@description('INVITATIONS_PER_MINUTE: app-wide pace of reset invitations (a positive decimal), apart from GRAPH_WRITES_PER_SECOND; Microsoft publishes no rate, see docs/operations.md.')
param invitationsPerMinute string = '6'

@minValue(1)
@description('BREAKER_HOLD_SECONDS: while the invitation breaker is open, a held request looks again this often.')
param breakerHoldSeconds int = 300

@description('SEND_INVITATION_MESSAGE: default for requests that do not say whether Microsoft should email the invitation.')
param sendInvitationMessage bool = false

@description('ALLOWED_EMAIL_DOMAINS: comma-separated domains a new email may use; empty allows any domain.')
param allowedEmailDomains string = ''

@description('BLOCKED_EMAIL_DOMAINS: comma-separated domains a new email may never use.')
param blockedEmailDomains string = ''

@description('ALLOW_MEMBER_RESET: also reset users whose userType is Member (external members). Off: guests only.')
param allowMemberReset bool = false

@description('CALLBACK_ALLOWED_HOSTS: comma-separated https hosts that may receive result callbacks (Logic Apps and Power Automate by default).')
param callbackAllowedHosts string = '*.logic.azure.com,*.azure-apim.net,*.flow.microsoft.com,*.powerautomate.com,*.api.powerplatform.com'

@description('BULK_SCHEDULE: when the bulk job looks for CSV files in the bulk-resets container, as NCRONTAB with seconds ({second} {minute} {hour} {day} {month} {day-of-week}), in UTC.')
param bulkSchedule string = '0 */5 * * * *'

@description('SWEEP_SCHEDULE: when the sweeper looks for stalled requests (NCRONTAB with seconds, UTC).')
param sweepSchedule string = '30 */5 * * * *'

@description('SWEEP_GRACE_SECONDS: how long a request may show no sign of life before the sweeper re-enqueues it.')
param sweepGraceSeconds int = 300

@description('DELIVERY_DEADLINE_SECONDS: deadline of one delivery; at least 60 s below host.json functionTimeout.')
param deliveryDeadlineSeconds int = 240

@description('READBACK_WINDOW_SECONDS: how long the guest is read back after an invitation whose outcome is unknown.')
param readbackWindowSeconds int = 60

@description('RESET_REQUEST_QUEUE: queue the worker reads; its poison queue is <name>-poison.')
param requestQueueName string = 'guest-reset-requests'

@description('RESET_RESULT_QUEUE: queue that receives one result message per finished request.')
param resultQueueName string = 'guest-reset-results'

@description('RESET_CALLBACK_QUEUE: queue of callback deliveries (one job per finished request that has a callbackUrl).')
param callbackQueueName string = 'guest-reset-callbacks'

@description('RESET_STATUS_TABLE: table holding one status record per requestId.')
param statusTableName string = 'GuestResetStatus'

@description('RESET_STATE_TABLE: table holding the state all instances share (the Graph write budget\'s schedule).')
param stateTableName string = 'GuestResetState'

// ---------------------------------------------------------------------------------------------
// Monitoring: a workbook and alert rules on Application Insights (docs/operations.md is the runbook).
// ---------------------------------------------------------------------------------------------
@description('Email address that receives the alerts (an action group). Empty: the alert rules still fire and show in the portal, but notify nobody.')
param alertEmailAddress string = ''

@minValue(1)
@maxValue(100)
@description('Alert when more than this percentage of finished requests failed over 30 minutes (at least 10 finished).')
param alertFailureRatePercent int = 10

// ---------------------------------------------------------------------------------------------
// Permissions and front-door options.
// ---------------------------------------------------------------------------------------------
@description('Grant the identity the Microsoft Graph application permissions User.ReadWrite.All and RoleManagement.Read.Directory during deployment (Microsoft Graph Bicep extension, public cloud only). The deployer needs the Entra role Privileged Role Administrator (or Global Administrator). Leave false and run infra/scripts/grant-graph-permission.sh when another team grants permissions.')
param grantGraphPermission bool = false

@description('Put App Service authentication (Microsoft Entra ID) in front of the HTTP API, on top of function keys.')
param enableAppServiceAuth bool = false

@description('Client (application) id of the Entra app registration that represents the HTTP API. Required when enableAppServiceAuth is true.')
param authClientId string = ''

@description('Token audiences the API accepts; empty means api://<authClientId> and <authClientId>.')
param authAllowedAudiences array = []

@description('Client application ids allowed to call the API (for example a Logic App\'s managed identity); empty allows any caller holding a token for the API.')
param authAllowedClientApplications array = []

@description('ALLOWED_CALLERS: comma-separated object ids or application ids (GUIDs; names can change, ids cannot) the app accepts from App Service authentication\'s caller headers. Set only together with enableAppServiceAuth: without it those headers are not trustworthy, so the app gets an empty value.')
param allowedCallers string = ''

@description('With enableAppServiceAuth: create the API\'s app registration with its app roles (one per capability, infra/app/api-roles.json) and use it as authClientId. Needs an Entra role that may create applications. When false, give authClientId and add the roles with infra/scripts/api-app-roles.sh.')
param createApiRegistration bool = false

// ---------------------------------------------------------------------------------------------
// Least power (docs/security.md). The defaults are the safe ones.
// ---------------------------------------------------------------------------------------------
@description('KEY_CAPABILITIES: what a function key holder may do without Entra ID (app role values, comma separated). Empty: Reset.Submit, plus Reset.SwitchEmail once allowedEmailDomains is set.')
param keyCapabilities string = ''

@description('QUEUE_CAPABILITIES: what a message on the request queue may ask for (Reset.Submit, Reset.SwitchEmail, Reset.MessageOptions). Empty: as keyCapabilities\' default.')
param queueCapabilities string = ''

@description('REDIRECT_ALLOWED_URLS: comma-separated https URLs a request\'s inviteRedirectUrl may use (that URL or below it). Empty: inviteRedirectUrl alone.')
param redirectAllowedUrls string = ''

@description('ALLOW_CUSTOM_MESSAGE_BODY: accept customizedMessageBody although Graph drops it for app-only invitations. Off.')
param allowCustomMessageBody bool = false

@minValue(1)
@description('RETENTION_DAYS: finished status records are deleted this many days after they finished.')
param retentionDays int = 30

@minValue(1)
@description('REDEEM_URL_HOURS: a redeem link nobody fetched is erased this many hours after the reset.')
param redeemUrlHours int = 72

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
@description('Storage redundancy. Queues and the status table are operational data; pick ZRS/GZRS where the region offers it for zone resilience.')
param storageSkuName string = 'Standard_LRS'

@description('Send queue/table/blob write and delete logs to Log Analytics (who enqueued what, poison moves). Reads are left out: queue polling would flood the workspace.')
param enableStorageDiagnostics bool = true

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var appName = !empty(functionAppName) ? functionAppName : '${abbrs.webSitesFunctions}api-${resourceToken}'
var deploymentStorageContainerName = 'app-package-${take(appName, 32)}-${take(toLower(uniqueString(appName, resourceToken)), 7)}'
var bulkContainerName = 'bulk-resets'
var poisonQueueName = '${requestQueueName}-poison'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: !empty(resourceGroupName) ? resourceGroupName : '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'app/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: !empty(identityName) ? identityName : '${abbrs.managedIdentityUserAssignedIdentities}api-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'app/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: !empty(logAnalyticsName) ? logAnalyticsName : '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: !empty(applicationInsightsName) ? applicationInsightsName : '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'app/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: !empty(storageAccountName) ? storageAccountName : '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    containerNames: [
      deploymentStorageContainerName
      bulkContainerName
    ]
    queueNames: [
      requestQueueName
      poisonQueueName
      resultQueueName
      callbackQueueName
    ]
    tableNames: [
      statusTableName
      stateTableName
    ]
    logAnalyticsWorkspaceId: enableStorageDiagnostics ? monitoring.outputs.logAnalyticsWorkspaceId : ''
  }
}

module rbac 'app/rbac.bicep' = {
  name: 'rbac'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    identityPrincipalId: identity.outputs.principalId
    userPrincipalId: principalId
    bulkContainerName: bulkContainerName
    bulkUploaderPrincipalId: bulkUploaderPrincipalId
  }
}

module apiRegistration 'app/api-registration.bicep' = if (enableAppServiceAuth && createApiRegistration) {
  name: 'apiRegistration'
  scope: rg
  params: {
    uniqueName: 'guest-reset-api-${resourceToken}'
    displayName: 'Guest Redemption Reset API (${environmentName})'
  }
}

var apiClientId = enableAppServiceAuth && createApiRegistration ? apiRegistration.outputs.appId : authClientId

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: appName
    planName: !empty(appServicePlanName) ? appServicePlanName : '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentStorageContainerName: deploymentStorageContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    requestQueueName: requestQueueName
    resultQueueName: resultQueueName
    callbackQueueName: callbackQueueName
    statusTableName: statusTableName
    stateTableName: stateTableName
    graphBaseUrl: graphBaseUrl
    inviteRedirectUrl: inviteRedirectUrl
    sendInvitationMessage: sendInvitationMessage
    allowedEmailDomains: allowedEmailDomains
    blockedEmailDomains: blockedEmailDomains
    allowMemberReset: allowMemberReset
    graphWritesPerSecond: graphWritesPerSecond
    graphWriteBurst: graphWriteBurst
    graphRetryDelays: graphRetryDelays
    graphMaxAttempts: graphMaxAttempts
    graphTimeoutSeconds: graphTimeoutSeconds
    callbackAllowedHosts: callbackAllowedHosts
    roleCheck: roleCheck
    replicationWaitSeconds: replicationWaitSeconds
    invitationsPerMinute: invitationsPerMinute
    breakerHoldSeconds: breakerHoldSeconds
    bulkContainerName: bulkContainerName
    bulkSchedule: bulkSchedule
    sweepSchedule: sweepSchedule
    sweepGraceSeconds: sweepGraceSeconds
    deliveryDeadlineSeconds: deliveryDeadlineSeconds
    readbackWindowSeconds: readbackWindowSeconds
    enableAppServiceAuth: enableAppServiceAuth
    authClientId: apiClientId
    authAllowedAudiences: authAllowedAudiences
    authAllowedClientApplications: authAllowedClientApplications
    allowedCallers: allowedCallers
    keyCapabilities: keyCapabilities
    queueCapabilities: queueCapabilities
    redirectAllowedUrls: redirectAllowedUrls
    allowCustomMessageBody: allowCustomMessageBody
    retentionDays: retentionDays
    redeemUrlHours: redeemUrlHours
  }
}

module observability 'app/observability.bicep' = {
  name: 'observability'
  scope: rg
  params: {
    namePrefix: 'guest-reset-${resourceToken}'
    location: location
    tags: tags
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    alertEmailAddress: alertEmailAddress
    failureRatePercent: alertFailureRatePercent
  }
}

// Application permission for Microsoft Graph; see infra/README.md for the directory role it needs.
module graphPermission 'app/graph-permission.bicep' = if (grantGraphPermission) {
  name: 'graphPermission'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = api.outputs.name
output SERVICE_API_NAME string = api.outputs.name
output AZURE_FUNCTION_APP_URL string = api.outputs.defaultUrl
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_RESET_REQUEST_QUEUE string = requestQueueName
output AZURE_RESET_POISON_QUEUE string = poisonQueueName
output AZURE_RESET_RESULT_QUEUE string = resultQueueName
output AZURE_RESET_STATUS_TABLE string = statusTableName
output AZURE_BULK_CONTAINER string = bulkContainerName
output AZURE_MANAGED_IDENTITY_NAME string = identity.outputs.name
output AZURE_MANAGED_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output AZURE_MANAGED_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output AZURE_APPLICATION_INSIGHTS_NAME string = monitoring.outputs.applicationInsightsName
output AZURE_LOG_ANALYTICS_WORKSPACE_NAME string = monitoring.outputs.logAnalyticsWorkspaceName
output AZURE_RESET_STATE_TABLE string = stateTableName
output AZURE_WORKBOOK_ID string = observability.outputs.workbookId
output GRAPH_PERMISSION_GRANTED_BY_DEPLOYMENT bool = grantGraphPermission
output AZURE_API_CLIENT_ID string = apiClientId
