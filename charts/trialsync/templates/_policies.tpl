{{/* The SyncConfig writes the chart's admission policies check: where the webhooks check
     SyncConfigs (and with operator.watchNamespaces, only there: another release may
     serve the other namespaces, with its own allowlist). */}}
{{- define "trialsync.syncconfigPolicyMatch" -}}
resourceRules:
  - apiGroups: [trialsync.io]
    apiVersions: ["*"]
    operations: [CREATE, UPDATE]
    resources: [syncconfigs]
namespaceSelector:
  {{- include "trialsync.namespaceSelector" . | nindent 2 }}
  {{- with .Values.operator.watchNamespaces }}
    - key: kubernetes.io/metadata.name
      operator: In
      values: {{ toJson . }}
  {{- end }}
{{- end -}}
