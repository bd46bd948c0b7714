{{/* The release's base name: the release name, or release-chart when they differ. */}}
{{- define "trialsync.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "trialsync.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trialsync.labels" -}}
{{ include "trialsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: trialsync
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "trialsync.serviceAccount" -}}{{ include "trialsync.fullname" . }}-operator{{- end -}}
{{- define "trialsync.webhookService" -}}{{ include "trialsync.fullname" . }}-webhook{{- end -}}
{{- define "trialsync.tlsSecret" -}}{{ include "trialsync.fullname" . }}-webhook-tls{{- end -}}
{{- define "trialsync.lease" -}}{{ include "trialsync.fullname" . }}-operator{{- end -}}
{{- define "trialsync.webhookConfig" -}}{{ include "trialsync.fullname" . }}{{- end -}}

{{- define "trialsync.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "trialsync.sidecarImage" -}}
{{ .Values.sidecar.image.repository }}:{{ .Values.sidecar.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* Namespaces whose pods and SyncConfigs never reach the webhooks. */}}
{{- define "trialsync.namespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      - kube-system
      - kube-public
      - kube-node-lease
      - {{ .Release.Namespace }}
      {{- range .Values.webhook.excludeNamespaces }}
      - {{ . }}
      {{- end }}
  - key: trialsync.io/injection
    operator: NotIn
    values: [disabled]
{{- end -}}

{{/* The caBundle: the operator's CA when its Secret exists (upgrades keep it), else empty
     until the operator fills it in. cert-manager's injector fills it in its mode. */}}
{{- define "trialsync.caBundle" -}}
{{- if not .Values.certificates.certManager.enabled -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace (include "trialsync.tlsSecret" .) -}}
{{- if and $secret $secret.data (index $secret.data "ca.crt") -}}
caBundle: {{ index $secret.data "ca.crt" }}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "trialsync.webhookAnnotations" -}}
{{- if .Values.certificates.certManager.enabled -}}
annotations:
  cert-manager.io/inject-ca-from: {{ .Release.Namespace }}/{{ include "trialsync.tlsSecret" . }}
{{- end -}}
{{- end -}}

{{/* What the operator calls where SyncConfigs live: kopf lists and watches them (no
     single GET), the leader patches their status and their finalizer (JSON patch: it
     holds a SyncConfig whose head-node service pods still use), records Events, creates
     head-node token Secrets (and dry-runs a create to learn whether a credentials Secret
     exists, never reading one), keeps the head-node Services it owns, and lists the pods
     of a SyncConfig being deleted to know when the last has finished. */}}
{{- define "trialsync.syncconfigRules" -}}
- apiGroups: [trialsync.io]
  resources: [syncconfigs]
  verbs: [list, watch, patch]
- apiGroups: [trialsync.io]
  resources: [syncconfigs/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list]
{{- end -}}
