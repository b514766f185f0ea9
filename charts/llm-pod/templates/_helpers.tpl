{{/* Names and labels. */}}
{{- define "llm-pod.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-pod.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "llm-pod.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-pod.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "llm-pod.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "llm-pod.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
llm-pod/model: {{ .Values.model.servedName | replace "/" "_" | replace ":" "_" | trunc 63 | trimSuffix "-" | quote }}
{{- end }}

{{- define "llm-pod.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "llm-pod.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "llm-pod.image" -}}
{{- printf "%s:%s" .image.repository (default .chart.AppVersion .image.tag) }}
{{- end }}

{{/* The static keys Secret: the user's, or the chart-made one for testing. */}}
{{- define "llm-pod.keysSecret" -}}
{{- if .Values.auth.staticKeys.existingSecret }}
{{- .Values.auth.staticKeys.existingSecret }}
{{- else if .Values.auth.staticKeys.generate }}
{{- printf "%s-keys" (include "llm-pod.fullname" .) }}
{{- end }}
{{- end }}

{{- define "llm-pod.pathPrefixes" -}}
{{- if .Values.autoscaling.keda.pathPrefixes }}
{{- toJson .Values.autoscaling.keda.pathPrefixes }}
{{- else }}
{{- toJson (list (printf "/%s" .Values.model.servedName)) }}
{{- end }}
{{- end }}

{{/* Rules that make bad combinations a clear error at render time. */}}
{{- define "llm-pod.validate" -}}
{{- if and .Values.autoscaling.keda.enabled .Values.autoscaling.hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are both true: choose one autoscaler" }}
{{- end }}
{{- if and (not .Values.auth.staticKeys.existingSecret) (not .Values.auth.staticKeys.generate) (not .Values.auth.jwt.enabled) (not .Values.auth.redis.enabled) }}
{{- fail "no credential source: set auth.staticKeys.existingSecret, auth.jwt.enabled or auth.redis.enabled" }}
{{- end }}
{{- if and .Values.auth.jwt.enabled .Values.auth.jwt.jwksUrl .Values.auth.jwt.secret.existingSecret }}
{{- fail "auth.jwt: set jwksUrl (RS/PS/ES algorithms) or secret.existingSecret (HS algorithms), not both" }}
{{- end }}
{{- if and .Values.auth.redis.enabled (not .Values.auth.redis.existingSecret) }}
{{- fail "auth.redis.enabled needs auth.redis.existingSecret (a Secret holding the Redis URL)" }}
{{- end }}
{{- if and (eq .Values.model.cache.type "hostPath") (not .Values.model.cache.hostPath) }}
{{- fail "model.cache.type=hostPath needs model.cache.hostPath" }}
{{- end }}
{{- if and (hasPrefix "https://" .Values.model.source) (not .Values.model.sha256) }}
{{- fail "an https:// model.source needs model.sha256" }}
{{- end }}
{{- if and .Values.autoscaling.keda.coldStartPlaceholder.enabled (eq .Values.autoscaling.keda.api "httpScaledObject") }}
{{- fail "autoscaling.keda.coldStartPlaceholder needs api: interceptorRoute" }}
{{- end }}
{{- end }}

{{/* Settings every container of the pod shares. */}}
{{- define "llm-pod.commonEnv" -}}
- name: LLM_POD_SERVED_MODEL
  value: {{ .Values.model.servedName | quote }}
- name: LLM_POD_LISTEN_PORT
  value: {{ .Values.ports.http | quote }}
- name: LLM_POD_METRICS_PORT
  value: {{ .Values.ports.metrics | quote }}
- name: LLM_POD_SIDECAR_PORT
  value: {{ .Values.ports.sidecar | quote }}
- name: LLM_POD_ENGINE_PORT
  value: {{ .Values.engine.port | quote }}
- name: LLM_POD_REQUEST_END_PORT
  value: {{ .Values.ports.requestEnd | quote }}
{{- end }}

{{- define "llm-pod.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
