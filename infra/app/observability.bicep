// Eyes on the app: an Azure Monitor workbook and log search alert rules over Application Insights,
// and an action group that mails the operators. The workbook and the rules' KQL live beside this
// file as JSON (workbook.json, alerts.json), so the offline tests read exactly what is deployed;
// docs/operations.md is the runbook for every rule.
param namePrefix string
param location string = resourceGroup().location
param tags object = {}
param applicationInsightsName string

@description('Email address of the operators; empty creates no action group (the rules still fire, notifying nobody).')
param alertEmailAddress string = ''

@description('The failure-rate rule fires above this percentage of finished requests.')
param failureRatePercent int = 10

var workbook = loadJsonContent('workbook.json')
var alerts = loadJsonContent('alerts.json')
var actionGroupName = '${namePrefix}-operators'

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmailAddress)) {
  name: actionGroupName
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'guestreset'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmailAddress
        useCommonAlertSchema: true
      }
    ]
  }
}

resource dashboard 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, namePrefix, 'workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: 'Guest Redemption Reset'
    category: 'workbook'
    sourceId: applicationInsights.id
    version: '1.0'
    serializedData: string(union(workbook, {
      fallbackResourceIds: [
        applicationInsights.id
      ]
    }))
  }
}

// Each rule's query returns a row only when its condition holds, so "more than 0 rows" fires it.
resource rules 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [for alert in alerts: {
  name: '${namePrefix}-${alert.id}'
  location: location
  tags: tags
  properties: {
    displayName: alert.name
    description: alert.description
    severity: alert.severity
    enabled: true
    evaluationFrequency: alert.evaluationFrequency
    windowSize: alert.windowSize
    scopes: [
      applicationInsights.id
    ]
    criteria: {
      allOf: [
        {
          query: replace(alert.query, '{failureRatePercent}', string(failureRatePercent))
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(alertEmailAddress) ? [] : [
        resourceId('Microsoft.Insights/actionGroups', actionGroupName)
      ]
    }
  }
  dependsOn: [
    actionGroup
  ]
}]

output workbookId string = dashboard.id
output actionGroupName string = empty(alertEmailAddress) ? '' : actionGroupName
