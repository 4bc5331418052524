// The HTTP API's Microsoft Entra app registration, with one app role per capability
// (infra/app/api-roles.json, the same values the app reads from a token's roles claim).
// Deployed only when main.bicep's enableAppServiceAuth and createApiRegistration are both true.
// The deploying user needs an Entra role that may create applications (Application
// Administrator, Cloud Application Administrator or Application Developer).
extension microsoftGraphV1

@description('Unique name of the registration, so a redeploy updates it instead of creating another.')
param uniqueName string

param displayName string

var roles = loadJsonContent('api-roles.json')

resource api 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  appRoles: [
    for role in roles: {
      id: role.id
      value: role.value
      displayName: role.displayName
      description: role.description
      allowedMemberTypes: [
        'Application'
        'User'
      ]
      isEnabled: true
    }
  ]
}

// Only principals given an app role get a token for the API at all.
resource apiServicePrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: api.appId
  appRoleAssignmentRequired: true
}

output appId string = api.appId
output servicePrincipalId string = apiServicePrincipal.id
