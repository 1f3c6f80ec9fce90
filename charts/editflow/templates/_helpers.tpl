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
An image reference: global.imageRegistry in front of a repository that names no registry
(Docker's rule: a first path component with a dot or a colon, or `localhost`, is a registry
host), and the tag defaulting to the chart's appVersion.
Usage: image: {{ include "editflow.image" (dict "ctx" . "image" .Values.operator.image) }}
*/}}
{{- define "editflow.image" -}}
{{- $repository := .image.repository }}
{{- $registry := (.ctx.Values.global | default dict).imageRegistry | default "" | trimSuffix "/" }}
{{- $parts := splitList "/" $repository }}
{{- $first := first $parts }}
{{- $named := and (gt (len $parts) 1) (or (contains "." $first) (contains ":" $first) (eq $first "localhost")) }}
{{- if and $registry (not $named) }}
{{- $repository = printf "%s/%s" $registry $repository }}
{{- end }}
{{- printf "%s:%s" $repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/*
The Lease the operator replicas elect their leader with (release namespace); the operator's
EDITFLOW_OPERATOR__LEASE_NAME and the leader-election Role's resourceNames use it.
Usage: {{ include "editflow.leaseName" . }}
*/}}
{{- define "editflow.leaseName" -}}
{{- include "editflow.operatorName" . }}
{{- end }}

{{/*
A PodDisruptionBudget for a Deployment with more than one replica (nothing otherwise):
minAvailable when set, else maxUnavailable.
Usage: {{- include "editflow.pdb" (dict "ctx" . "component" "gateway" "name" $name "replicas" .Values.gateway.replicas "budget" .Values.gateway.podDisruptionBudget) }}
*/}}
{{- define "editflow.pdb" -}}
{{- if and .budget.enabled (gt (int .replicas) 1) }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ .name }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "editflow.labels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
spec:
  {{- if ne (toString .budget.minAvailable) "" }}
  minAvailable: {{ .budget.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .budget.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "editflow.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 6 }}
{{- end }}
{{- end }}

{{/*
A Pod's affinity: the user's, else (more than one replica) a preferred anti-affinity that
spreads the replicas over nodes, so one node's loss takes at most one of them.
Usage: {{- include "editflow.affinity" (dict "ctx" . "component" "operator" "replicas" .Values.operator.replicas "affinity" .Values.operator.affinity) | nindent 6 }}
*/}}
{{- define "editflow.affinity" -}}
{{- if .affinity }}
affinity:
  {{- toYaml .affinity | nindent 2 }}
{{- else if gt (int .replicas) 1 }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "editflow.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 14 }}
{{- end }}
{{- end }}

{{/*
Every namespace where EditJobs live: the release namespace first, then watchNamespaces,
without duplicates, as a JSON list (the operator's EDITFLOW_OPERATOR__NAMESPACES format).
Usage: {{- range (include "editflow.namespaces" . | fromJsonArray) }} ... {{- end }}
*/}}
{{- define "editflow.namespaces" -}}
{{- prepend .Values.watchNamespaces .Release.Namespace | uniq | toJson }}
{{- end }}

{{/* A namespaceSelector of exactly the namespaces the operator watches. */}}
{{- define "editflow.watchedNamespaceSelector" -}}
matchExpressions:
  - key: kubernetes.io/metadata.name
    operator: In
    values: {{ include "editflow.namespaces" . }}
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
{{- /* Memoised for the render: two templates asking for the same key (the NATS Secret and a
worker namespace's copy of the worker's password) get the same generated value. */}}
{{- $memo := .ctx.Values.editflowGenerated | default dict }}
{{- $_ := set .ctx.Values "editflowGenerated" $memo }}
{{- $id := printf "%s/%s" .secret .key }}
{{- if not (hasKey $memo $id) }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret }}
{{- if and $existing $existing.data (hasKey $existing.data .key) }}
{{- $_ := set $memo $id (index $existing.data .key | b64dec) }}
{{- else }}
{{- $_ := set $memo $id (randAlphaNum (int .length)) }}
{{- end }}
{{- end }}
{{- index $memo $id }}
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
Secrets come from files (S3 keys, signing key); each role's NATS credential is added by
"editflow.natsAuthEnv" (secretKeyRef: the settings read the password only from the environment).
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
{{- /* The gateway and the bridge refuse image URLs before a GPU run with the worker's allow-list. */}}
- name: EDITFLOW_WORKER__ALLOW_HOSTS
  value: {{ toJson .Values.worker.allowHosts | quote }}
- name: EDITFLOW_WORKER__ALLOW_CIDRS
  value: {{ toJson .Values.worker.allowCidrs | quote }}
{{- if include "editflow.signingSecretName" . }}
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
{{- with include "editflow.signingSecretName" . }}
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
{{- if include "editflow.signingSecretName" . }}
- name: events-signing
  mountPath: /etc/editflow/events
  readOnly: true
{{- end }}
{{- end }}

{{/*
NetworkPolicy egress to DNS: port 53 on any address (kube-dns, or a node-local cache).
Usage: {{- include "editflow.dnsEgress" . | nindent 4 }}
*/}}
{{- define "editflow.dnsEgress" -}}
# DNS
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end }}

{{/*
NetworkPolicy egress to public addresses: any IPv4/IPv6 address except the private,
link-local (cloud metadata), shared and loopback ranges.
Usage: {{- include "editflow.publicEgress" (dict "private" $private) | nindent 4 }}
*/}}
{{- define "editflow.publicEgress" -}}
# Public addresses only.
- to:
    - ipBlock:
        cidr: 0.0.0.0/0
        except:
          {{- toYaml .private | nindent 10 }}
    - ipBlock:
        cidr: ::/0
        except:
          - fc00::/7
          - fe80::/10
          - ::1/128
{{- end }}

{{/*
NetworkPolicy egress rules to a server given by address (`nats://a:4222,nats://b:4222` or
`host:port`): the bundled server's Pods by label, a `<service>.<namespace>.svc` name by its
namespace, a literal IPv4 address as /32; a public host name needs no rule (public egress).
Usage: {{ include "editflow.egressPeers" (dict "ctx" . "addresses" $url "defaultPort" 4222 "bundled" false "component" "nats" "bundledPort" 4222) }}
*/}}
{{- define "editflow.egressPeers" -}}
{{- if .bundled }}
# The bundled {{ .component }} server.
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ .ctx.Release.Namespace }}
      podSelector:
        matchLabels:
          {{- include "editflow.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 10 }}
  ports:
    - port: {{ .bundledPort }}
      protocol: TCP
{{- else }}
{{- range $address := splitList "," .addresses }}
{{- $hostPort := regexReplaceAll "^[a-z]+://" (trim $address) "" }}
{{- $hostPort = regexReplaceAll "^[^@]*@" (regexReplaceAll "/.*$" $hostPort "") "" }}
{{- $host := regexReplaceAll ":[0-9]+$" $hostPort "" }}
{{- $port := $.defaultPort }}
{{- if regexMatch ":[0-9]+$" $hostPort }}
{{- $port = regexFind "[0-9]+$" $hostPort }}
{{- end }}
{{- if regexMatch "^[a-z0-9-]+\\.[a-z0-9-]+\\.svc(\\..*)?$" $host }}
# {{ $host }}
- to:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ index (splitList "." $host) 1 }}
  ports:
    - port: {{ $port }}
      protocol: TCP
{{- else if regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" $host }}
# {{ $host }}
- to:
    - ipBlock:
        cidr: {{ $host }}/32
  ports:
    - port: {{ $port }}
      protocol: TCP
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The Secret (keys user, password) with a namespace's warm-worker NATS identity, which the
operator puts on every warm worker Pod. The chart creates it in every worker namespace for
generated passwords; with nats.auth.existingSecret (which lives in the release namespace
only) create `<fullname>-worker-nats` in each namespace yourself, with that namespace's user.
Usage: {{ include "editflow.workerNatsSecret" . }} -> name, or empty
*/}}
{{- define "editflow.workerNatsSecret" -}}
{{- $auth := .Values.nats.auth }}
{{- if and (eq .Values.worker.mode "warm") (eq $auth.method "userPassword") (not $auth.insecure) }}
{{- printf "%s-worker-nats" (include "editflow.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Secret (keys access-key, secret-key) of the read-only weights key that workers read
models.s3Prefix with: models.s3ReaderSecret, or `<fullname>-weights`, which the chart
creates (in every worker namespace) when weights come from S3 under per-attempt keys, and
whose MinIO user the operator creates at start (editflow.operator.s3users). Empty when
workers need none.
Usage: {{ include "editflow.weightsSecret" . }} -> name, or empty
*/}}
{{- define "editflow.weightsSecret" -}}
{{- if .Values.models.s3ReaderSecret }}
{{- .Values.models.s3ReaderSecret }}
{{- else if and .Values.models.s3Prefix .Values.s3.attemptCredentials }}
{{- printf "%s-weights" (include "editflow.fullname" .) }}
{{- end }}
{{- end }}

{{/*
limits.previewSlots, refused at render time when it leaves the full edits no share of the cap.
Usage: {{ include "editflow.previewSlots" . }}
*/}}
{{- define "editflow.previewSlots" -}}
{{- $slots := int .Values.limits.previewSlots }}
{{- $cap := int .Values.limits.maxRunningPerNamespace }}
{{- if and (gt $slots 0) (ge $slots $cap) }}
{{- fail (printf "limits.previewSlots (%d) must be below limits.maxRunningPerNamespace (%d): the full edits need a share of the cap too; set previewSlots: 0 to let previews queue with them" $slots $cap) }}
{{- end }}
{{- $slots }}
{{- end }}
