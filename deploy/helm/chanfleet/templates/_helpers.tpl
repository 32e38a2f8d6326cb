{{/* Names, labels and images. Plain defines only; the logic stays in the templates. */}}

{{- define "chanfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chanfleet.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. Call with (dict "ctx" $ "component" "ws"). */}}
{{- define "chanfleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "chanfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: chanfleet
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "chanfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chanfleet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "chanfleet.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{- define "chanfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "chanfleet.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}

{{/* FQDN of a Service of this release: (dict "ctx" $ "suffix" "ws"). */}}
{{- define "chanfleet.serviceFqdn" -}}
{{ include "chanfleet.fullname" .ctx }}-{{ .suffix }}.{{ .ctx.Release.Namespace }}.svc.{{ .ctx.Values.clusterDomain }}
{{- end -}}

{{/* Sentinel addresses for REDIS_SENTINELS: the pods' stable names, or the external set. */}}
{{- define "chanfleet.redisSentinels" -}}
{{- if eq .Values.redis.mode "external" -}}
{{ join "," .Values.redis.external.sentinels }}
{{- else -}}
{{- $sentinels := list -}}
{{- range $i := until 3 -}}
{{- $sentinels = append $sentinels (printf "%s-redis-%d.%s:26379" (include "chanfleet.fullname" $) $i (include "chanfleet.serviceFqdn" (dict "ctx" $ "suffix" "redis-headless"))) -}}
{{- end -}}
{{ join "," $sentinels }}
{{- end -}}
{{- end -}}

{{/* Secret and keys holding the Redis passwords, for either mode. */}}
{{- define "chanfleet.redisSecretName" -}}
{{- if eq .Values.redis.mode "external" -}}
{{ .Values.redis.external.existingSecret }}
{{- else -}}
{{ .Values.redis.auth.existingSecret | default (printf "%s-redis" (include "chanfleet.fullname" .)) }}
{{- end -}}
{{- end -}}

{{- define "chanfleet.redisPasswordKey" -}}
{{ if eq .Values.redis.mode "external" }}{{ .Values.redis.external.passwordKey }}{{ else }}redis-password{{ end }}
{{- end -}}

{{- define "chanfleet.redisSentinelPasswordKey" -}}
{{ if eq .Values.redis.mode "external" }}{{ .Values.redis.external.sentinelPasswordKey }}{{ else }}sentinel-password{{ end }}
{{- end -}}

{{/* A secret value: the given one, else the one already stored (upgrades), else a new random one.
     Call with (dict "ctx" $ "secret" NAME "key" KEY "given" VALUE). */}}
{{- define "chanfleet.secretValue" -}}
{{- if .given -}}
{{ .given }}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing (hasKey ($existing.data | default dict) .key) -}}
{{ index $existing.data .key | b64dec }}
{{- else -}}
{{ randAlphaNum 48 }}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment of the http and ws containers: secrets by reference, the rest from the ConfigMap. */}}
{{- define "chanfleet.appEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
# The pod IP lets kubelet probes and Prometheus scrapes (Host: <pod IP>:<port>) pass Django's
# host check; Kubernetes expands $(POD_IP) because it is defined above.
- name: ALLOWED_HOSTS
  value: {{ printf "%s,$(POD_IP)" (join "," .Values.app.allowedHosts) | quote }}
- name: SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret | default (printf "%s-app" (include "chanfleet.fullname" .)) }}
      key: SECRET_KEY
- name: SERVICE_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.secrets.existingSecret | default (printf "%s-app" (include "chanfleet.fullname" .)) }}
      key: SERVICE_TOKEN
      optional: true
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.database.existingSecret | default (printf "%s-app" (include "chanfleet.fullname" .)) }}
      key: {{ if .Values.database.existingSecret }}{{ .Values.database.existingSecretKey }}{{ else }}DATABASE_URL{{ end }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chanfleet.redisSecretName" . }}
      key: {{ include "chanfleet.redisPasswordKey" . }}
{{- if include "chanfleet.redisSentinelPasswordKey" . }}
- name: REDIS_SENTINEL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chanfleet.redisSecretName" . }}
      key: {{ include "chanfleet.redisSentinelPasswordKey" . }}
{{- end }}
{{- end -}}

{{/* Pod and container security settings shared by every chanfleet-image pod. */}}
{{- define "chanfleet.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "chanfleet.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* topologySpreadConstraints for one component: (dict "ctx" $ "component" "ws"). */}}
{{- define "chanfleet.topologySpread" -}}
{{- $ctx := .ctx -}}
{{- $component := .component -}}
{{- range $key := $ctx.Values.topologySpread.topologyKeys }}
- maxSkew: {{ $ctx.Values.topologySpread.maxSkew }}
  topologyKey: {{ $key }}
  whenUnsatisfiable: {{ $ctx.Values.topologySpread.whenUnsatisfiable }}
  labelSelector:
    matchLabels:
      {{- include "chanfleet.selectorLabels" (dict "ctx" $ctx "component" $component) | nindent 6 }}
  {{- if ne $component "redis" }}
  # Count only the pods of the same ReplicaSet, so a rollout's new pods spread too.
  matchLabelKeys:
    - pod-template-hash
  {{- end }}
{{- end }}
{{- end -}}
