{{/* Names and labels. */}}
{{- define "metering.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "metering.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "metering.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "metering.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: metering
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "worker") */}}
{{- define "metering.selectorLabels" -}}
app.kubernetes.io/name: {{ include "metering.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "metering.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "metering.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "metering.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The KafkaUser (and SCRAM user name) of a component: (dict "ctx" $ "component" "worker") */}}
{{- define "metering.kafkaUserName" -}}
{{- printf "%s-%s" (include "metering.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret holding the SASL password of a component: an existing one, or Strimzi's. */}}
{{- define "metering.saslSecret" -}}
{{- if .ctx.Values.kafka.sasl.existingSecret -}}
{{- .ctx.Values.kafka.sasl.existingSecret -}}
{{- else if and .ctx.Values.strimzi.enabled .ctx.Values.strimzi.user.create -}}
{{- include "metering.kafkaUserName" . -}}
{{- end -}}
{{- end -}}

{{/*
Refuse what must never be in values: secrets in plain text, settings the chart sets itself,
more worker replicas than partitions (they would stay idle and never become ready).
*/}}
{{- define "metering.validate" -}}
{{- range $key := list "sasl_password" "sasl_password_file" "ssl_cafile" "ssl_certfile" "ssl_keyfile" "group_instance_id" "data_dir" "archive_dir" "web_bind" "web_port" "archive_web_port" -}}
{{- if hasKey $.Values.settings $key -}}
{{- if eq $key "sasl_password" -}}
{{- fail "settings.sasl_password: never put a secret in values; create a Secret and set kafka.sasl.existingSecret (or let Strimzi create it: strimzi.user.create)" -}}
{{- else -}}
{{- fail (printf "settings.%s is set by the chart (see values.yaml: worker/archive/kafka); remove it from settings" $key) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $partitions := int (default 4 .Values.settings.partitions) -}}
{{- if and (gt (int .Values.worker.replicas) $partitions) (not .Values.worker.allowIdleReplicas) -}}
{{- fail (printf "worker.replicas=%d exceeds settings.partitions=%d: the extra workers get no partition, do nothing and never become ready (see README, Kubernetes: scale-out). Grow the partitions first, or set worker.allowIdleReplicas=true for hot spares" (int .Values.worker.replicas) $partitions) -}}
{{- end -}}
{{- end -}}

{{/* METERING_* environment of every metering container, from .Values.settings. */}}
{{- define "metering.settingsEnv" -}}
{{- range $key, $value := .Values.settings }}
- name: {{ printf "METERING_%s" (upper $key) }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/*
Env and mounts for the Kafka credentials (files from Secrets, never values). The security
settings (security_protocol, sasl_mechanism, ...) come from .Values.settings; the chart adds
the file paths of what it mounts, and the SASL user name of Strimzi's KafkaUser, only where
the protocol uses them (the worker refuses a TLS file with PLAINTEXT, for instance).
*/}}
{{- define "metering.kafkaSecretEnv" -}}
{{- $v := .ctx.Values -}}
{{- $protocol := $v.settings.security_protocol | default "PLAINTEXT" -}}
{{- $secret := include "metering.saslSecret" . -}}
{{- if $secret }}
- name: METERING_SASL_PASSWORD_FILE
  value: /etc/metering/sasl/{{ $v.kafka.sasl.passwordKey }}
{{- end }}
{{- if and (hasPrefix "SASL_" $protocol) (not $v.settings.sasl_username) $v.strimzi.enabled $v.strimzi.user.create (not $v.kafka.sasl.existingSecret) }}
- name: METERING_SASL_USERNAME
  value: {{ include "metering.kafkaUserName" . | quote }}
{{- end }}
{{- if and (hasSuffix "SSL" $protocol) $v.kafka.tls.existingSecret }}
- name: METERING_SSL_CAFILE
  value: /etc/metering/tls/{{ $v.kafka.tls.caKey }}
{{- if $v.kafka.tls.clientCertificate }}
- name: METERING_SSL_CERTFILE
  value: /etc/metering/tls/{{ $v.kafka.tls.certKey }}
- name: METERING_SSL_KEYFILE
  value: /etc/metering/tls/{{ $v.kafka.tls.keyKey }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "metering.kafkaSecretMounts" -}}
{{- if include "metering.saslSecret" . }}
- name: sasl
  mountPath: /etc/metering/sasl
  readOnly: true
{{- end }}
{{- if .ctx.Values.kafka.tls.existingSecret }}
- name: tls
  mountPath: /etc/metering/tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "metering.kafkaSecretVolumes" -}}
{{- $secret := include "metering.saslSecret" . -}}
{{- if $secret }}
- name: sasl
  secret:
    secretName: {{ $secret }}
    defaultMode: 0440
    items:
      - key: {{ .ctx.Values.kafka.sasl.passwordKey }}
        path: {{ .ctx.Values.kafka.sasl.passwordKey }}
{{- end }}
{{- if .ctx.Values.kafka.tls.existingSecret }}
- name: tls
  secret:
    secretName: {{ .ctx.Values.kafka.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/*
The effective Kafka names (settings' defaults, with settings.topic_prefix before each, as
metering.settings.load_settings applies it), as YAML: use with `include ... | fromYaml`.
*/}}
{{- define "metering.kafkaNames" -}}
{{- $s := .Values.settings -}}
{{- $p := $s.topic_prefix | default "" -}}
appId: {{ printf "%s%s" $p ($s.app_id | default "metering") | quote }}
input: {{ printf "%s%s" $p ($s.input_topic | default "cs") | quote }}
usage: {{ printf "%s%s" $p ($s.usage_topic | default "usage") | quote }}
rejects: {{ printf "%s%s" $p ($s.rejects_topic | default "metering.rejected") | quote }}
events: {{ printf "%s%s" $p ($s.events_topic | default "metering.events") | quote }}
{{- end -}}
