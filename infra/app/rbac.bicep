// Azure RBAC for the app's identity (and optionally the person running azd), each role scoped to
// the one resource it is needed on. Least privilege per the Functions identity-connection docs:
// the host needs Blob Data Owner (leases, deployment package), the queue trigger must also write
// the poison queue, the status table is read and written.
param storageAccountName string
param applicationInsightsName string

@description('Object id of the function app\'s user-assigned identity.')
param identityPrincipalId string

@description('Object id of the deployer; empty assigns nothing. Gets queue and table data access for the first dry run, and blob data access on the bulk container.')
param userPrincipalId string = ''

@description('Name of the container the bulk job reads CSV files from.')
param bulkContainerName string

@description('Object id of a user or group (the identity team) who may upload bulk CSV files; empty assigns nothing. Gets blob data access on the bulk container only.')
param bulkUploaderPrincipalId string = ''

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles)
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b' // Storage Blob Data Owner
var storageQueueDataContributorRoleId = '974c5e8b-45b9-4653-ba55-5f855dd0fb88' // Storage Queue Data Contributor
var storageTableDataContributorRoleId = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3' // Storage Table Data Contributor
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb' // Monitoring Metrics Publisher

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: storage
  name: 'default'
}

resource bulkContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: bulkContainerName
}

// Host storage (AzureWebJobsStorage), the deployment package container and bulk-resets.
resource identityBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, storageBlobDataOwnerRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Queue trigger, result output and the poison queue the host writes on the last failure.
resource identityQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, storageQueueDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Status table and the host's diagnostic events.
resource identityTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identityPrincipalId, storageTableDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// Telemetry ingestion with Entra auth (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
resource identityMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, identityPrincipalId, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: identityPrincipalId
    principalType: 'ServicePrincipal'
  }
}

// The deployer: enqueue a dry-run request and read the results queue and status table.
// principalType is left out because azd may run as a user or as a pipeline's service principal.
resource userQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, storageQueueDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageQueueDataContributorRoleId)
    principalId: userPrincipalId
  }
}

resource userTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, storageTableDataContributorRoleId)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributorRoleId)
    principalId: userPrincipalId
  }
}

// Uploading bulk CSV files into bulk-resets/incoming/ and reading the reports: the deployer, and the
// identity team if a principal is given. Storage Blob Data Owner (one of the four roles the app
// needs anyway) scoped to this one container: on an account without hierarchical namespace it
// grants no more there than Blob Data Contributor would, and nothing on any other container.
resource userBulkBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(userPrincipalId)) {
  name: guid(bulkContainer.id, userPrincipalId, storageBlobDataOwnerRoleId)
  scope: bulkContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: userPrincipalId
  }
}

resource uploaderBulkBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(bulkUploaderPrincipalId) && bulkUploaderPrincipalId != userPrincipalId) {
  name: guid(bulkContainer.id, bulkUploaderPrincipalId, storageBlobDataOwnerRoleId)
  scope: bulkContainer
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: bulkUploaderPrincipalId
  }
}
