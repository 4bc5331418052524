// Grants the managed identity the Microsoft Graph application permissions the app needs, each
// the least privileged one Microsoft documents for its calls (docs/graph.md has the sources):
// - User.ReadWrite.All: read and update users, and POST /invitations with resetRedemption=true
//   (User.Invite.All is not enough for a reset);
// - RoleManagement.Read.Directory: the role check (roleAssignments / transitiveRoleAssignments).
// Deployed only when main.bicep's grantGraphPermission is true. The deploying user needs the
// Entra role Privileged Role Administrator (or Global Administrator): Application and Cloud
// Application Administrators cannot grant Microsoft Graph app roles. Public cloud only.
extension microsoftGraphV1

@description('Object id of the managed identity\'s service principal.')
param principalId string

var graphAppId = '00000003-0000-0000-c000-000000000000' // Microsoft Graph's application id, the same in every tenant
var appRoleValues = [
  'User.ReadWrite.All'
  'RoleManagement.Read.Directory'
]

resource graph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: graphAppId
}

resource grants 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [
  for value in appRoleValues: {
    resourceId: graph.id
    appRoleId: (filter(graph.appRoles, role => role.value == value)[0]).id
    principalId: principalId
  }
]

output appRoleAssignmentIds array = [for (value, i) in appRoleValues: grants[i].id]
