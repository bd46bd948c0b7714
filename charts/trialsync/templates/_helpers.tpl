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

{{/* Namespaces whose pods and SyncConfigs reach the webhooks: with
     operator.watchNamespaces only those (so releases watching disjoint namespaces never
     see each other's pods), and never kube-system, kube-public, kube-node-lease, the
     release namespace, webhook.excludeNamespaces or a namespace labelled
     trialsync.io/injection=disabled. */}}
{{- define "trialsync.namespaceSelector" -}}
{{- $excluded := concat (list "kube-system" "kube-public" "kube-node-lease" .Release.Namespace) .Values.webhook.excludeNamespaces -}}
{{- $watched := .Values.operator.watchNamespaces -}}
{{- range $watched }}
{{- if has . $excluded }}
{{- fail (printf "operator.watchNamespaces lists %s, whose pods never reach the webhooks (kube-system, kube-public, kube-node-lease, the release namespace and webhook.excludeNamespaces are left out): remove it from one of the two lists" .) }}
{{- end }}
{{- end -}}
matchExpressions:
  {{- if $watched }}
  - key: kubernetes.io/metadata.name
    operator: In
    values:
      {{- range $watched }}
      - {{ . }}
      {{- end }}
  {{- end }}
  - key: kubernetes.io/metadata.name
    operator: NotIn
    values:
      {{- range $excluded }}
      - {{ . }}
      {{- end }}
  - key: trialsync.io/injection
    operator: NotIn
    values: [disabled]
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
     exists, never reading one), keeps the head-node Services it owns, lists the pods
     of a SyncConfig being deleted to know when the last has finished, and lists and
     watches the opted-in pods (by label) to poll their sidecars' sync status. */}}
{{- define "trialsync.syncconfigRules" -}}
- apiGroups: [trialsync.io]
  resources: [syncconfigs]
  verbs: [list, watch, patch]
- apiGroups: [trialsync.io]
  resources: [syncconfigs/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, list]
- apiGroups: [""]
  resources: [secrets]
  verbs: [create]
- apiGroups: [""]
  resources: [services]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
{{- end -}}

{{/* The caBundle the live configuration has (empty under `helm template`, where lookup
     sees no cluster, and in cert-manager mode, where cainjector owns it). */}}
{{- define "trialsync.liveCaBundle" -}}
{{- $root := .root -}}
{{- if not $root.Values.certificates.certManager.enabled -}}
{{- $live := lookup "admissionregistration.k8s.io/v1" .kind "" (include "trialsync.webhookConfig" $root) -}}
{{- $webhook := .webhook -}}
{{- range (($live | default dict).webhooks | default list) -}}
{{- if and (eq .name $webhook) .clientConfig.caBundle -}}
caBundle: {{ .clientConfig.caBundle }}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
