// User-assigned managed identity: the function app's only credential, for storage, monitoring
// and Microsoft Graph alike. A user-assigned identity (not system-assigned) keeps its object id
// when the app is recreated, so role assignments and the Graph permission survive redeploys.
param name string
param location string = resourceGroup().location
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
