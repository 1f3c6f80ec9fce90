{{/*
Helpers shared by every template. Each says what it returns and how to call it.
*/}}

{{/*
The chart name, truncated to a DNS label.
Usage: {{ include "editflow.name" . }}
*/}}
{{- define "editflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: the release name, or release-chart when the release name
does not contain the chart name. With `helm install editflow` it is `editflow`, so the
objects carry the operator's default names (editflow-worker, editflow-s3).
Usage: {{ include "editflow.fullname" . }}
*/}}
{{- define "editflow.fullname" -}}
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

{{/*
chart-version, for the helm.sh/chart label.
Usage: {{ include "editflow.chart" . }}
*/}}
{{- define "editflow.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The standard labels of every object, plus commonLabels.
Usage: {{- include "editflow.labels" (dict "ctx" . "component" "operator") | nindent 4 }}
*/}}
{{- define "editflow.labels" -}}
helm.sh/chart: {{ include "editflow.chart" .ctx }}
{{ include "editflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: editflow
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The labels a Deployment selects its Pods by (never change between upgrades).
Usage: {{- include "editflow.selectorLabels" (dict "ctx" . "component" "gateway") | nindent 6 }}
*/}}
{{- define "editflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "editflow.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
An image reference; the tag defaults to the chart's appVersion.
Usage: image: {{ include "editflow.image" (dict "ctx" . "image" .Values.operator.image) }}
*/}}
{{- define "editflow.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
Every namespace where EditJobs live: the release namespace first, then watchNamespaces,
without duplicates, as a JSON list (the operator's EDITFLOW_OPERATOR__NAMESPACES format).
Usage: {{- range (include "editflow.namespaces" . | fromJsonArray) }} ... {{- end }}
*/}}
{{- define "editflow.namespaces" -}}
{{- prepend .Values.watchNamespaces .Release.Namespace | uniq | toJson }}
{{- end }}

{{/*
Names of the objects the chart creates, shared by the templates that create them and the
operator settings that point at them (one definition, so they cannot drift apart).
Usage: {{ include "editflow.operatorName" . }}, "editflow.workerName" (ServiceAccount,
ConfigMap and PriorityClass of the GPU workers), "editflow.gatewayName".
*/}}
{{- define "editflow.operatorName" -}}
{{- printf "%s-operator" (include "editflow.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "editflow.workerName" -}}
{{- printf "%s-worker" (include "editflow.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "editflow.gatewayName" -}}
{{- printf "%s-gateway" (include "editflow.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The NATS URL editflow connects to: the bundled server's Service, or nats.url.
Usage: {{ include "editflow.natsUrl" . }}
*/}}
{{- define "editflow.natsUrl" -}}
{{- if .Values.nats.bundled.enabled }}
{{- printf "nats://%s-nats.%s.svc:4222" (include "editflow.fullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.nats.url }}
{{- end }}
{{- end }}

{{/*
The S3 endpoint (host:port): the bundled MinIO's Service, or s3.endpoint.
Usage: {{ include "editflow.s3Endpoint" . }}
*/}}
{{- define "editflow.s3Endpoint" -}}
{{- if .Values.s3.bundled.enabled }}
{{- printf "%s-minio.%s.svc:9000" (include "editflow.fullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.s3.endpoint }}
{{- end }}
{{- end }}

{{/*
The S3 Secret (keys access-key, secret-key) worker Jobs and the operator read: the user's
existingSecret, or the one the chart creates in every namespace.
Usage: {{ include "editflow.s3SecretName" . }}
*/}}
{{- define "editflow.s3SecretName" -}}
{{- default (printf "%s-s3" (include "editflow.fullname" .)) .Values.s3.existingSecret }}
{{- end }}

{{/*
The claim with the model directories, or nothing when models.pvc is off.
Usage: {{- with include "editflow.modelsClaim" . }}claimName: {{ . }}{{ end }}
*/}}
{{- define "editflow.modelsClaim" -}}
{{- if .Values.models.pvc.enabled }}
{{- default (printf "%s-models" (include "editflow.fullname" .)) .Values.models.pvc.existingClaim }}
{{- end }}
{{- end }}

{{/*
The PriorityClass of worker Pods: worker.priorityClassName, else the created one, else none.
Usage: {{- with include "editflow.workerPriorityClass" . }}...{{ end }}
*/}}
{{- define "editflow.workerPriorityClass" -}}
{{- if .Values.worker.priorityClassName }}
{{- .Values.worker.priorityClassName }}
{{- else if .Values.priorityClass.create }}
{{- default (include "editflow.workerName" .) .Values.priorityClass.name }}
{{- end }}
{{- end }}

{{/*
The NATS credential Secret (key by method), or nothing with method none.
Usage: {{- with include "editflow.natsSecretName" . }}...{{ end }}
*/}}
{{- define "editflow.natsSecretName" -}}
{{- if ne .Values.nats.auth.method "none" }}
{{- default (printf "%s-nats" (include "editflow.fullname" .)) .Values.nats.auth.existingSecret }}
{{- end }}
{{- end }}

{{/*
The gateway token Secret (key token).
Usage: {{ include "editflow.gatewayTokenSecretName" . }}
*/}}
{{- define "editflow.gatewayTokenSecretName" -}}
{{- default (printf "%s-gateway-token" (include "editflow.fullname" .)) .Values.gateway.token.existingSecret }}
{{- end }}

{{/*
The alert webhook Secret (key url), or nothing when no webhook is configured.
Usage: {{- with include "editflow.alertSecretName" . }}...{{ end }}
*/}}
{{- define "editflow.alertSecretName" -}}
{{- if .Values.alerts.webhook.existingSecret }}
{{- .Values.alerts.webhook.existingSecret }}
{{- else if .Values.alerts.webhook.url }}
{{- printf "%s-alerts" (include "editflow.fullname" .) }}
{{- end }}
{{- end }}

{{/*
A value kept across upgrades: the key of an existing Secret if there is one (lookup; empty
under `helm template`), else a new random string. The chart "always configures" credentials
it generates, without changing them on every upgrade.
Usage: {{ include "editflow.keep" (dict "ctx" . "secret" "name" "key" "token" "length" 40) }}
*/}}
{{- define "editflow.keep" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}

{{/*
Quantities and selector values as strings, so `cpu: 1` and `cpu: "1"` mean the same to the
operator's typed settings (dict[str, str]).
Usage: {{ include "editflow.stringMap" .Values.worker.nodeSelector }} -> JSON object
*/}}
{{- define "editflow.stringMap" -}}
{{- $out := dict }}
{{- range $k, $v := . }}
{{- $_ := set $out $k (toString $v) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Worker resources as the operator wants them: {"requests": {...}, "limits": {...}}, strings.
Usage: {{ include "editflow.workerResources" . }}
*/}}
{{- define "editflow.workerResources" -}}
{{- $out := dict }}
{{- range $kind, $values := .Values.worker.resources }}
{{- $_ := set $out $kind (include "editflow.stringMap" $values | fromJson) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Environment shared by the operator and the gateway: logging, namespace, NATS, S3, events.
Secrets come from files (S3 keys, signing key) or secretKeyRef (NATS password/token, which
the settings read only from the environment).
Usage: {{- include "editflow.commonEnv" . | nindent 12 }}
*/}}
{{- define "editflow.commonEnv" -}}
- name: EDITFLOW_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
- name: EDITFLOW_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: EDITFLOW_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: EDITFLOW_NATS__URL
  value: {{ include "editflow.natsUrl" . | quote }}
{{- $nats := include "editflow.natsSecretName" . }}
{{- if eq .Values.nats.auth.method "userPassword" }}
- name: EDITFLOW_NATS__USER
  value: {{ .Values.nats.auth.user | quote }}
- name: EDITFLOW_NATS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $nats }}
      key: password
{{- else if eq .Values.nats.auth.method "token" }}
- name: EDITFLOW_NATS__TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $nats }}
      key: token
{{- else if eq .Values.nats.auth.method "creds" }}
- name: EDITFLOW_NATS__CREDS_FILE
  value: /etc/editflow/nats-auth/creds
{{- else if eq .Values.nats.auth.method "nkey" }}
- name: EDITFLOW_NATS__NKEY_SEED_FILE
  value: /etc/editflow/nats-auth/nkey-seed
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: EDITFLOW_NATS__TLS_CA_FILE
  value: /etc/editflow/nats-tls/ca.crt
{{- if .Values.nats.tls.clientCertificate }}
- name: EDITFLOW_NATS__TLS_CERT_FILE
  value: /etc/editflow/nats-tls/tls.crt
- name: EDITFLOW_NATS__TLS_KEY_FILE
  value: /etc/editflow/nats-tls/tls.key
{{- end }}
{{- end }}
- name: EDITFLOW_S3__ENDPOINT
  value: {{ include "editflow.s3Endpoint" . | quote }}
- name: EDITFLOW_S3__SECURE
  value: {{ .Values.s3.secure | quote }}
- name: EDITFLOW_S3__BUCKET
  value: {{ .Values.s3.bucket | quote }}
- name: EDITFLOW_S3__REGION
  value: {{ .Values.s3.region | quote }}
{{- with .Values.s3.publicEndpoint }}
- name: EDITFLOW_S3__PUBLIC_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: EDITFLOW_S3__PRESIGN_EXPIRY_SECONDS
  value: {{ .Values.s3.presignExpirySeconds | int64 | quote }}
- name: EDITFLOW_S3__ACCESS_KEY_FILE
  value: /etc/editflow/s3/access-key
- name: EDITFLOW_S3__SECRET_KEY_FILE
  value: /etc/editflow/s3/secret-key
- name: EDITFLOW_EVENTS__APPROVAL_SUBJECT
  value: {{ .Values.events.approvalSubject | quote }}
- name: EDITFLOW_EVENTS__WITHDRAW_SUBJECT
  value: {{ .Values.events.withdrawSubject | quote }}
- name: EDITFLOW_EVENTS__STORAGE
  value: {{ .Values.events.storage | quote }}
- name: EDITFLOW_EVENTS__REPLICAS
  value: {{ .Values.events.replicas | int64 | quote }}
{{- if .Values.events.signingKey.existingSecret }}
- name: EDITFLOW_EVENTS__SIGNING_KEY_FILE
  value: /etc/editflow/events/signing-key
{{- end }}
{{- end }}

{{/*
Volumes behind commonEnv's files (the matching mounts: "editflow.commonMounts").
Usage: {{- include "editflow.commonVolumes" . | nindent 8 }}
*/}}
{{- define "editflow.commonVolumes" -}}
- name: tmp
  emptyDir: {}
- name: s3
  secret:
    secretName: {{ include "editflow.s3SecretName" . }}
    defaultMode: 0440
    items:
      - key: access-key
        path: access-key
      - key: secret-key
        path: secret-key
{{- if has .Values.nats.auth.method (list "creds" "nkey") }}
- name: nats-auth
  secret:
    secretName: {{ include "editflow.natsSecretName" . }}
    defaultMode: 0440
    items:
      - key: {{ ternary "creds" "nkey-seed" (eq .Values.nats.auth.method "creds") }}
        path: {{ ternary "creds" "nkey-seed" (eq .Values.nats.auth.method "creds") }}
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  secret:
    secretName: {{ .Values.nats.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- with .Values.events.signingKey.existingSecret }}
- name: events-signing
  secret:
    secretName: {{ . }}
    defaultMode: 0440
    items:
      - key: signing-key
        path: signing-key
{{- end }}
{{- end }}

{{/*
Mounts of "editflow.commonVolumes".
Usage: {{- include "editflow.commonMounts" . | nindent 12 }}
*/}}
{{- define "editflow.commonMounts" -}}
- name: tmp
  mountPath: /tmp
- name: s3
  mountPath: /etc/editflow/s3
  readOnly: true
{{- if has .Values.nats.auth.method (list "creds" "nkey") }}
- name: nats-auth
  mountPath: /etc/editflow/nats-auth
  readOnly: true
{{- end }}
{{- if .Values.nats.tls.enabled }}
- name: nats-tls
  mountPath: /etc/editflow/nats-tls
  readOnly: true
{{- end }}
{{- if .Values.events.signingKey.existingSecret }}
- name: events-signing
  mountPath: /etc/editflow/events
  readOnly: true
{{- end }}
{{- end }}
