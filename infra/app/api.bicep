// The function app on a Flex Consumption (FC1, Linux) plan. Every connection uses the
// user-assigned identity: no keys, no connection strings. The runtime lives in
// functionAppConfig.runtime, so FUNCTIONS_WORKER_RUNTIME is not an app setting on Flex.
param name string
param planName string
param location string = resourceGroup().location
param tags object = {}

@description('azd service name in azure.yaml; azd deploys the package to the site tagged with it.')
param serviceName string = 'api'

param identityId string
param identityClientId string
param storageAccountName string
param deploymentStorageContainerName string
param applicationInsightsName string

@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

param requestQueueName string
param resultQueueName string
param callbackQueueName string
param statusTableName string
param stateTableName string
param graphBaseUrl string
param inviteRedirectUrl string
param sendInvitationMessage bool
param allowedEmailDomains string
param blockedEmailDomains string
param allowMemberReset bool
param graphWritesPerSecond string
param graphWriteBurst int
param graphRetryDelays string
param graphMaxAttempts int
param graphTimeoutSeconds int
param callbackAllowedHosts string

@description('ROLE_CHECK: transitive (beta transitiveRoleAssignments, group-held roles too) or direct (v1.0 roleAssignments).')
param roleCheck string

@description('REPLICATION_WAIT_SECONDS: how long a reset waits for its own email switch to read back.')
param replicationWaitSeconds int

@description('INVITATIONS_PER_MINUTE: app-wide pace of POST /invitations (a positive decimal).')
param invitationsPerMinute string

@description('BREAKER_HOLD_SECONDS: while the invitation breaker is open, a held request looks again this often.')
param breakerHoldSeconds int

@description('BULK_CONTAINER: blob container the bulk job reads CSV files from (incoming/) and writes reports to.')
param bulkContainerName string

@description('BULK_SCHEDULE: NCRONTAB schedule of the bulk job, six fields with seconds, in UTC.')
param bulkSchedule string

@description('SWEEP_SCHEDULE and SWEEP_GRACE_SECONDS: the sweeper of stalled requests.')
param sweepSchedule string
param sweepGraceSeconds int

@description('DELIVERY_DEADLINE_SECONDS and READBACK_WINDOW_SECONDS: time limits of one delivery.')
param deliveryDeadlineSeconds int
param readbackWindowSeconds int

param enableAppServiceAuth bool = false
param authClientId string = ''
param authAllowedAudiences array = []
param authAllowedClientApplications array = []

@description('Callers the app accepts from the X-MS-CLIENT-PRINCIPAL headers; passed on only when App Service authentication is on.')
param allowedCallers string = ''

param keyCapabilities string
param queueCapabilities string
param redirectAllowedUrls string
param allowCustomMessageBody bool
param retentionDays int
param redeemUrlHours int

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex needs zone-redundant (ZRS) storage and a region with availability zones; an outage only delays queued resets, it loses none.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: Logic Apps and Power Automate call the HTTP API from the internet; it requires function keys and, optionally, Entra ID (enableAppServiceAuth). No VNet in this template.
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys and optionally Entra ID tokens; Logic Apps and Power Automate connectors do not present client certificates.
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero per function group; a queued reset waits for an instance instead of failing over. alwaysReady instances would cost money for no gain here.
  // checkov:skip=CKV_AZURE_213: no health check path: Flex replaces unhealthy instances itself and the app has no HTTP route whose failure should evict an instance.
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientAffinityEnabled: false
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentStorageContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.12'
      }
    }
  }
}

// Every setting the app reads, under the names of local.settings.sample.json. Locally
// AzureWebJobsStorage is an Azurite connection string; here the host gets the identity and
// the three service URIs instead, and the plain AzureWebJobsStorage name is never set.
resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13: false positive: checkov reads every sites/config resource as a site; authentication is the authSettings resource below.
  // checkov:skip=CKV_AZURE_63: false positive (sites/config read as a site); logs and requests go to Application Insights.
  // checkov:skip=CKV_AZURE_65: false positive (sites/config read as a site).
  // checkov:skip=CKV_AZURE_66: false positive (sites/config read as a site).
  // checkov:skip=CKV_AZURE_80: false positive (sites/config read as a site); the runtime is Python, not .NET.
  // checkov:skip=CKV_AZURE_88: false positive (sites/config read as a site); Flex Consumption does not use Azure Files.
  // checkov:skip=CKV_AZURE_222: false positive (sites/config read as a site); see the skip on functionApp.
  parent: functionApp
  name: 'appsettings'
  properties: {
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    AzureWebJobsStorage__blobServiceUri: 'https://${storage.name}.blob.${environment().suffixes.storage}'
    AzureWebJobsStorage__queueServiceUri: 'https://${storage.name}.queue.${environment().suffixes.storage}'
    AzureWebJobsStorage__tableServiceUri: 'https://${storage.name}.table.${environment().suffixes.storage}'
    AZURE_CLIENT_ID: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    // The worker streams its own OpenTelemetry (host.json telemetryMode OpenTelemetry); the
    // libraries' HTTP spans stay off: their URLs would carry Graph $filter email addresses and
    // Logic Apps callback signatures (docs/operations.md, Telemetry).
    PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
    OTEL_PYTHON_DISABLED_INSTRUMENTATIONS: 'httpx,httpx2,requests,urllib,urllib3'
    RESET_REQUEST_QUEUE: requestQueueName
    RESET_RESULT_QUEUE: resultQueueName
    RESET_CALLBACK_QUEUE: callbackQueueName
    RESET_STATUS_TABLE: statusTableName
    RESET_STATE_TABLE: stateTableName
    GRAPH_BASE_URL: graphBaseUrl
    // The tenant the app works in: the default redirect opens My Apps in it (?tenantId=).
    AZURE_TENANT_ID: tenant().tenantId
    INVITE_REDIRECT_URL: inviteRedirectUrl
    SEND_INVITATION_MESSAGE: sendInvitationMessage ? 'true' : 'false'
    ALLOWED_EMAIL_DOMAINS: allowedEmailDomains
    BLOCKED_EMAIL_DOMAINS: blockedEmailDomains
    ALLOW_MEMBER_RESET: allowMemberReset ? 'true' : 'false'
    GRAPH_WRITES_PER_SECOND: graphWritesPerSecond
    GRAPH_WRITE_BURST: string(graphWriteBurst)
    GRAPH_RETRY_DELAYS: graphRetryDelays
    GRAPH_MAX_ATTEMPTS: string(graphMaxAttempts)
    GRAPH_TIMEOUT_SECONDS: string(graphTimeoutSeconds)
    CALLBACK_ALLOWED_HOSTS: callbackAllowedHosts
    ROLE_CHECK: roleCheck
    REPLICATION_WAIT_SECONDS: string(replicationWaitSeconds)
    INVITATIONS_PER_MINUTE: invitationsPerMinute
    BREAKER_HOLD_SECONDS: string(breakerHoldSeconds)
    BULK_CONTAINER: bulkContainerName
    BULK_SCHEDULE: bulkSchedule
    SWEEP_SCHEDULE: sweepSchedule
    SWEEP_GRACE_SECONDS: string(sweepGraceSeconds)
    DELIVERY_DEADLINE_SECONDS: string(deliveryDeadlineSeconds)
    READBACK_WINDOW_SECONDS: string(readbackWindowSeconds)
    // Only App Service authentication makes the caller headers trustworthy (the platform
    // strips and rewrites them); without it a caller could forge them, so the list stays empty.
    ALLOWED_CALLERS: enableAppServiceAuth ? allowedCallers : ''
    // Behind App Service authentication every call must carry its principal; roles are capabilities.
    REQUIRE_ENTRA_ID: enableAppServiceAuth ? 'true' : 'false'
    KEY_CAPABILITIES: keyCapabilities
    QUEUE_CAPABILITIES: queueCapabilities
    REDIRECT_ALLOWED_URLS: redirectAllowedUrls
    ALLOW_CUSTOM_MESSAGE_BODY: allowCustomMessageBody ? 'true' : 'false'
    RETENTION_DAYS: string(retentionDays)
    REDEEM_URL_HOURS: string(redeemUrlHours)
  }
}

// No publishing passwords: azd and the Core Tools deploy to Flex with Entra tokens.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: functionApp
  name: 'scm'
  properties: {
    allow: false
  }
}

// Optional Microsoft Entra ID sign-in in front of the HTTP API. Function keys stay required
// (the HTTP functions use AuthLevel.FUNCTION); queue and timer triggers are not affected.
var authAudiences = empty(authAllowedAudiences) ? [
  'api://${authClientId}'
  authClientId
] : authAllowedAudiences
var authAllowedApplicationsPolicy = empty(authAllowedClientApplications) ? {} : {
  defaultAuthorizationPolicy: {
    allowedApplications: authAllowedClientApplications
  }
}

resource authSettings 'Microsoft.Web/sites/config@2024-04-01' = if (enableAppServiceAuth) {
  // checkov:skip=CKV_AZURE_13: false positive: this resource is the App Service authentication itself (checkov reads sites/config as a site).
  // checkov:skip=CKV_AZURE_63: false positive (sites/config read as a site).
  // checkov:skip=CKV_AZURE_65: false positive (sites/config read as a site).
  // checkov:skip=CKV_AZURE_66: false positive (sites/config read as a site).
  // checkov:skip=CKV_AZURE_80: false positive (sites/config read as a site); the runtime is Python, not .NET.
  // checkov:skip=CKV_AZURE_88: false positive (sites/config read as a site); Flex Consumption does not use Azure Files.
  // checkov:skip=CKV_AZURE_222: false positive (sites/config read as a site); see the skip on functionApp.
  parent: functionApp
  name: 'authsettingsV2'
  properties: {
    platform: {
      enabled: true
    }
    globalValidation: {
      requireAuthentication: true
      unauthenticatedClientAction: 'Return401'
    }
    httpSettings: {
      requireHttps: true
    }
    identityProviders: {
      azureActiveDirectory: {
        enabled: true
        registration: {
          clientId: authClientId
          openIdIssuer: '${environment().authentication.loginEndpoint}${tenant().tenantId}/v2.0'
        }
        validation: union({ allowedAudiences: authAudiences }, authAllowedApplicationsPolicy)
      }
    }
    login: {
      tokenStore: {
        enabled: false
      }
    }
  }
}

output name string = functionApp.name
output defaultUrl string = 'https://${functionApp.properties.defaultHostName}'
