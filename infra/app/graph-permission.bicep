// Grants the managed identity the Microsoft Graph application permission User.ReadWrite.All,
// the least privileged permission that allows POST /invitations with resetRedemption=true.
// Deployed only when main.bicep's grantGraphPermission is true. The deploying user needs the
// Entra role Privileged Role Administrator (or Global Administrator): Application and Cloud
// Application Administrators cannot grant Microsoft Graph app roles. Public cloud only.
extension microsoftGraphV1

@description('Object id of the managed identity\'s service principal.')
param principalId string

var graphAppId = '00000003-0000-0000-c000-000000000000' // Microsoft Graph's application id, the same in every tenant
var appRoleValue = 'User.ReadWrite.All'

resource graph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: graphAppId
}

resource userReadWriteAll 'Microsoft.Graph/appRoleAssignedTo@v1.0' = {
  resourceId: graph.id
  appRoleId: (filter(graph.appRoles, role => role.value == appRoleValue)[0]).id
  principalId: principalId
}

output appRoleAssignmentId string = userReadWriteAll.id
