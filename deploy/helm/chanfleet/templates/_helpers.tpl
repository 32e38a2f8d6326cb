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
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{ include "chanfleet.podLabels" . }}
{{- end -}}

{{/* Labels of pod templates: no chart version and no appVersion, so a chart bump alone does
     not restart any pod (Redis included). Call with (dict "ctx" $ "component" "ws" "extra"
     .Values.ws.podLabels); extra labels never replace the chart's own. */}}
{{- define "chanfleet.podLabels" -}}
{{- $labels := fromYaml (include "chanfleet.selectorLabels" .) -}}
{{- $_ := set $labels "app.kubernetes.io/managed-by" .ctx.Release.Service -}}
{{- $_ := set $labels "app.kubernetes.io/part-of" "chanfleet" -}}
{{- $labels = merge $labels (.ctx.Values.commonLabels | default dict) (.extra | default dict) -}}
{{- toYaml $labels -}}
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

{{/* Name suffix of Redis group g (counted from 0), for its StatefulSet, headless Service and
     Sentinel master name: none for the first, which keeps the names it had before groups
     existed, "-<g+1>" for the others (as deploy/sentinel/render.py names local shards).
     Call with g. */}}
{{- define "chanfleet.redisGroupSuffix" -}}
{{- if . }}-{{ add . 1 }}{{ end -}}
{{- end -}}

{{/* Sentinel addresses for REDIS_SENTINELS: the pods' stable names, or the external set. */}}
{{- define "chanfleet.redisSentinels" -}}
{{- if eq .Values.redis.mode "external" -}}
{{ join "," .Values.redis.external.sentinels }}
{{- else -}}
{{- $sentinels := list -}}
{{- range $i := until (int .Values.redis.replicas) -}}
{{- $sentinels = append $sentinels (printf "%s-redis-%d.%s:26379" (include "chanfleet.fullname" $) $i (include "chanfleet.serviceFqdn" (dict "ctx" $ "suffix" "redis-headless"))) -}}
{{- end -}}
{{ join "," $sentinels }}
{{- end -}}
{{- end -}}

{{/* Secret and keys holding the Redis passwords, for either mode. */}}
{{- define "chanfleet.redisSecretName" -}}
{{- if eq .Values.redis.mode "external" -}}
{{ .Values.redis.external.existingSecret }}
{{- else if eq .Values.redis.mode "url" -}}
{{ .Values.redis.url.existingSecret }}
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

{{/* A secret value: the given one, else the one already stored, else a new random one.
     Call with (dict "ctx" $ "secret" NAME "key" KEY "given" VALUE "value" "values.path").
     Generating is only safe on a first install. An upgrade render that cannot read the stored
     value (`helm template --is-upgrade`, `helm upgrade --dry-run` without server access, helm
     diff, or a deleted Secret) would rotate it under running pods, so it is refused instead.
     Plain `helm template` cannot be told apart from a first install: see values.yaml. */}}
{{- define "chanfleet.secretValue" -}}
{{- if .given -}}
{{ .given }}
{{- else -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing (hasKey ($existing.data | default dict) .key) -}}
{{ index $existing.data .key | b64dec }}
{{- else if .ctx.Release.IsUpgrade -}}
{{- fail (printf "cannot keep %s stable: this upgrade render cannot read key %s of Secret %s (no cluster access, or the Secret is gone), and a new random value would no longer match what the running pods and Redis use. Set %s (or the matching existingSecret) to the current value: kubectl -n %s get secret %s -o jsonpath='{.data.%s}' | base64 -d" .value .key .secret .value .ctx.Release.Namespace .secret .key) -}}
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
{{- if eq .Values.redis.mode "url" }}
# The URL may carry the password: from a Secret only.
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.url.existingSecret }}
      key: {{ .Values.redis.url.key }}
{{- else }}
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
{{- end }}
{{- end -}}

{{/* The chart's own keys of the env ConfigMap (app.extraEnv is added after them). */}}
{{- define "chanfleet.configEnv" -}}
DEBUG: "0"
HTTPS: {{ ternary "1" "0" .Values.app.https | quote }}
CSRF_TRUSTED_ORIGINS: {{ join "," .Values.app.csrfTrustedOrigins | quote }}
LOG_LEVEL: {{ .Values.app.logLevel | quote }}
{{- if ne .Values.redis.mode "url" }}
REDIS_SENTINELS: {{ include "chanfleet.redisSentinels" . | quote }}
REDIS_MASTER_NAME: {{ .Values.redis.masterName | quote }}
{{- if .Values.redis.shards }}
REDIS_SHARDS: {{ prepend .Values.redis.shards .Values.redis.masterName | join "," | quote }}
{{- else if and (eq .Values.redis.mode "internal") (gt (int .Values.redis.groups) 1) }}
{{- $masters := list }}
{{- range $g := until (int .Values.redis.groups) }}
{{- $masters = append $masters (printf "%s%s" $.Values.redis.masterName (include "chanfleet.redisGroupSuffix" $g)) }}
{{- end }}
REDIS_SHARDS: {{ join "," $masters | quote }}
{{- end }}
{{- end }}
DRAIN_WINDOW: {{ .Values.ws.drain.windowSeconds | quote }}
# Whose X-Forwarded-For uvicorn and gunicorn believe: the nginx pods' network (app.trustedProxies).
FORWARDED_ALLOW_IPS: {{ join "," .Values.app.trustedProxies | quote }}
# Loopback-only listener of /internal/drain and /internal/status (never a container port).
INTERNAL_PORT: {{ .Values.app.internalPort | quote }}
{{- end -}}

{{/* Names of the environment variables the chart sets in app containers (besides the env
     ConfigMap's keys): app.extraEnv must not repeat any of them (checks.yaml). */}}
{{- define "chanfleet.containerEnvNames" -}}
PORT WEB_CONCURRENCY DRAIN_TIMEOUT POD_IP ALLOWED_HOSTS SECRET_KEY SERVICE_TOKEN DATABASE_URL REDIS_URL REDIS_PASSWORD REDIS_SENTINEL_PASSWORD
{{- end -}}

{{/* Scheduling fields shared by every pod: (dict "ctx" $ "component" "ws" "values" .Values.ws). */}}
{{- define "chanfleet.scheduling" -}}
{{- $v := .values -}}
{{- if .ctx.Values.topologySpread.enabled }}
topologySpreadConstraints:
  {{- include "chanfleet.topologySpread" (dict "ctx" .ctx "component" .component) | trim | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
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

{{/* Checksum of what a rendered config object holds, without its metadata (whose labels carry
     the chart version): pods roll when the content changes, not on a chart bump.
     Call with (dict "ctx" $ "template" "/configmap-env.yaml"). */}}
{{- define "chanfleet.checksum" -}}
{{- $obj := include (print .ctx.Template.BasePath .template) .ctx | fromYaml | default dict -}}
{{- $_ := unset $obj "metadata" -}}
{{- toJson $obj | sha256sum -}}
{{- end -}}
