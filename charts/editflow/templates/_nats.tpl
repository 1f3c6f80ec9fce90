{{/*
NATS authentication: one user per role (operator, gateway, worker, publisher = the OA system),
each allowed only its own subjects. The permissions are written once here and used twice: in
the bundled NATS server's configuration, and in `authorization.conf` of the chart's NATS Secret
for an operator who runs their own NATS (the chart README explains both).
*/}}

{{/*
The NATS roles, in a fixed order.
Usage: {{- range (include "editflow.natsRoles" . | fromJsonArray) }}
*/}}
{{- define "editflow.natsRoles" -}}
{{- list "operator" "gateway" "worker" "publisher" | toJson }}
{{- end }}

{{/*
The warm workers' NATS users: one per namespace (issue 20 §2), so a worker's identity reaches
only its own namespace's work, results, status and control subjects. Each entry has the
namespace, the user (`<nats.auth.users.worker>-<namespace>`), the key of its password in the
chart's NATS Secret and the bundled server's environment variable holding it.
Usage: {{- range (include "editflow.natsWorkers" . | fromJsonArray) }}
*/}}
{{- define "editflow.natsWorkers" -}}
{{- $out := list }}
{{- range $ns := include "editflow.namespaces" . | fromJsonArray }}
{{- $out = append $out (dict
  "namespace" $ns
  "user" (printf "%s-%s" $.Values.nats.auth.users.worker $ns)
  "key" (printf "worker-%s-password" $ns)
  "var" (printf "WORKER_%s_PASSWORD" ($ns | upper | replace "-" "_"))) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The NATS users of the chart, in a fixed order: the operator, the gateway, one warm-worker user
per namespace, the OA publisher. Each has its role, user name, password key in the chart's NATS
Secret and the bundled server's environment variable for it (and, for a worker, its namespace).
Usage: {{- range (include "editflow.natsUsers" . | fromJsonArray) }}
*/}}
{{- define "editflow.natsUsers" -}}
{{- $users := .Values.nats.auth.users }}
{{- $out := list }}
{{- range $role := include "editflow.natsRoles" . | fromJsonArray }}
{{- if eq $role "worker" }}
{{- range $w := include "editflow.natsWorkers" $ | fromJsonArray }}
{{- $out = append $out (merge (dict "role" "worker") $w) }}
{{- end }}
{{- else }}
{{- $out = append $out (dict "role" $role "user" (index $users $role) "key" (printf "%s-password" $role) "var" (include "editflow.natsPasswordVar" $role)) }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
The model registry's names, read from the EditJob CRD's enum (one list: the CRD is generated
from editflow.events.worker_contract.MODEL_NAMES). A warm worker's permissions name each of its
namespace's consumers, `worker_<namespace>_<model>`: NATS wildcards match whole subject tokens,
and a consumer name is one token.
Usage: {{- range (include "editflow.modelNames" . | fromJsonArray) }}
*/}}
{{- define "editflow.modelNames" -}}
{{- $crd := .Files.Get "files/crds/editjob.yaml" | fromYaml }}
{{- $version := first $crd.spec.versions }}
{{- toJson $version.schema.openAPIV3Schema.properties.spec.properties.model.enum }}
{{- end }}

{{/*
Refuse a NATS without authentication unless nats.auth.insecure says it is on purpose, and
the combinations the bundled server cannot serve. Included by every template that connects.
Usage: {{- include "editflow.natsAuthGuard" . }}
*/}}
{{- define "editflow.natsAuthGuard" -}}
{{- $auth := .Values.nats.auth }}
{{- if and (eq $auth.method "none") (not $auth.insecure) }}
{{- fail "nats.auth.method=none leaves NATS open: anyone who reaches it can publish approvals and spend GPUs. Set nats.auth.method=userPassword (one user per role; with your own NATS also nats.auth.existingSecret or the generated authorization.conf, see the chart README), token, creds or nkey with nats.auth.existingSecret, or nats.auth.insecure=true to accept an open NATS on purpose" }}
{{- end }}
{{- if and (eq .Values.worker.mode "warm") (has $auth.method (list "token" "creds" "nkey")) }}
{{- fail (printf "nats.auth.method=%s gives every role and every namespace one shared NATS identity, so a warm worker could pull another namespace's edits and answer for them. Warm workers (worker.mode=warm, the default) need one identity per namespace: set nats.auth.method=userPassword (the chart makes one user per namespace; with your own NATS include the authorization.conf it writes), or worker.mode=job (Job-mode workers do not use NATS)" $auth.method) }}
{{- end }}
{{- if and .Values.nats.bundled.enabled (not (has $auth.method (list "userPassword" "none"))) }}
{{- fail (printf "nats.bundled.enabled takes nats.auth.method userPassword (one user per role with its own permissions) or none with nats.auth.insecure=true, not %s (a shared %s cannot keep a worker from publishing approvals)" $auth.method $auth.method) }}
{{- end }}
{{- end }}

{{/*
The names the permissions are made of. Streams, consumers and prefixes are the defaults of
editflow.core.settings.EventsSettings / GatewaySettings and editflow.events.worker_contract
(the chart sets none of them; renaming one with extraEnv needs the permissions renamed too).
Usage: {{- $n := include "editflow.natsNames" . | fromJson }}
*/}}
{{- define "editflow.natsNames" -}}
{{- $approvals := "EDITFLOW_APPROVALS" }}
{{- toJson (dict
  "approvals" $approvals
  "completions" "EDITFLOW_COMPLETIONS"
  "dlq" "EDITFLOW_DLQ"
  "advisories" "EDITFLOW_ADVISORIES"
  "audit" "EDITFLOW_AUDIT"
  "work" "EDITFLOW_WORK"
  "ledgerBucket" (printf "%s_LEDGER" $approvals)
  "rateBucket" "editflow_gateway_rate_limits"
  "completionPrefix" "editflow.completions"
  "reviewPrefix" "editflow.reviews"
  "dlqPrefix" "editflow.dlq"
  "auditPrefix" "editflow.audit"
  "callbackPrefix" "oa.callbacks"
  "workPrefix" "editflow.work"
  "resultPrefix" "editflow.worker.results"
  "workerStatusPrefix" "editflow.worker.status"
  "workerControlPrefix" "editflow.worker.control"
  "approvalSubject" .Values.events.approvalSubject
  "withdrawSubject" .Values.events.withdrawSubject
  "selectSubject" (printf "%s.select" .Values.events.approvalSubject)
  "reviewActionSubject" (printf "%s.review" .Values.events.approvalSubject)) }}
{{- end }}

{{/*
JetStream API subjects for reading a stream: its info and single messages (by sequence or
last by subject, direct or not).
Usage: {{ include "editflow.jsRead" "EDITFLOW_COMPLETIONS" }} -> JSON list
*/}}
{{- define "editflow.jsRead" -}}
{{- list (printf "$JS.API.STREAM.INFO.%s" .) (printf "$JS.API.STREAM.MSG.GET.%s" .) (printf "$JS.API.DIRECT.GET.%s" .) (printf "$JS.API.DIRECT.GET.%s.>" .) | toJson }}
{{- end }}

{{/*
JetStream API subjects for creating and updating a stream (never deleting or purging it).
Usage: {{ include "editflow.jsOwn" "EDITFLOW_APPROVALS" }} -> JSON list
*/}}
{{- define "editflow.jsOwn" -}}
{{- concat (include "editflow.jsRead" . | fromJsonArray) (list (printf "$JS.API.STREAM.CREATE.%s" .) (printf "$JS.API.STREAM.UPDATE.%s" .)) | toJson }}
{{- end }}

{{/*
JetStream API subjects for consuming a stream: create, look up and pull its consumers, and
acknowledge and flow-control its messages.
Usage: {{ include "editflow.jsConsume" "EDITFLOW_APPROVALS" }} -> JSON list
*/}}
{{- define "editflow.jsConsume" -}}
{{- list
  (printf "$JS.API.CONSUMER.CREATE.%s" .)
  (printf "$JS.API.CONSUMER.CREATE.%s.>" .)
  (printf "$JS.API.CONSUMER.DURABLE.CREATE.%s.>" .)
  (printf "$JS.API.CONSUMER.INFO.%s.>" .)
  (printf "$JS.API.CONSUMER.DELETE.%s.>" .)
  (printf "$JS.API.CONSUMER.MSG.NEXT.%s.>" .)
  (printf "$JS.ACK.%s.>" .)
  (printf "$JS.FC.%s.>" .) | toJson }}
{{- end }}

{{/*
A KV bucket its role creates, reads and writes: its stream (KV_<bucket>), its keys, a watch.
Usage: {{ include "editflow.kvOwn" "editflow_gateway_rate_limits" }} -> JSON list
*/}}
{{- define "editflow.kvOwn" -}}
{{- $stream := printf "KV_%s" . }}
{{- concat (include "editflow.jsOwn" $stream | fromJsonArray) (include "editflow.jsConsume" $stream | fromJsonArray) (list (printf "$KV.%s.>" .)) | toJson }}
{{- end }}

{{/*
A KV bucket its role only reads: stream info, single keys (direct or not), and the watch that
lists its keys (an ephemeral consumer delivering to the role's own inbox). No `$KV.` publish.
Usage: {{ include "editflow.kvRead" "EDITFLOW_DESK_design" }} -> JSON list
*/}}
{{- define "editflow.kvRead" -}}
{{- $stream := printf "KV_%s" . }}
{{- concat (include "editflow.jsRead" $stream | fromJsonArray) (include "editflow.jsConsume" $stream | fromJsonArray) | toJson }}
{{- end }}

{{/*
The designer's desk buckets of every watched namespace (docs/desk.md): the read model the
operator writes (`EDITFLOW_DESK_<ns>`) and the gateway's claims (`EDITFLOW_DESK_CLAIMS_<ns>`),
`<ns>` as editflow.events.desk.bucket_name spells it.
Usage: {{- range (include "editflow.deskBuckets" . | fromJsonArray) }}{{ .desk }} {{ .claims }}
*/}}
{{- define "editflow.deskBuckets" -}}
{{- $out := list }}
{{- range $ns := include "editflow.namespaces" . | fromJsonArray }}
{{- $token := regexReplaceAll "[^A-Za-z0-9_-]" $ns "_" }}
{{- $out = append $out (dict "namespace" $ns "desk" (printf "EDITFLOW_DESK_%s" $token) "claims" (printf "EDITFLOW_DESK_CLAIMS_%s" $token)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Each user's NATS permissions, as {user: {publish: {allow: [...]}, subscribe: {allow: [...]}}}.
Nothing outside the allow lists: the worker, gateway and publisher cannot touch the operator's
ledger, the publisher and worker cannot publish completions, only the publisher and the gateway
(which turns HTTP requests into approvals) may publish approvals. Only the operator creates
streams and consumers. A namespace's warm worker may only pull and acknowledge its namespace's
consumers and publish its namespace's results and heartbeats (issue 20 §2). The desk: only
the gateway publishes review actions (not the OA publisher: a reviewer's identity is the
gateway's to vouch for), and it may read but not write the operator's tickets.
Usage: {{- $permissions := include "editflow.natsPermissions" . | fromJson }}
*/}}
{{- define "editflow.natsPermissions" -}}
{{- $n := include "editflow.natsNames" . | fromJson }}
{{- $info := list "$JS.API.INFO" }}
{{- $operatorPub := concat $info
  (list "$JS.API.STREAM.NAMES")
  (include "editflow.jsOwn" $n.approvals | fromJsonArray)
  (include "editflow.jsConsume" $n.approvals | fromJsonArray)
  (include "editflow.jsOwn" $n.completions | fromJsonArray)
  (include "editflow.jsOwn" $n.dlq | fromJsonArray)
  (include "editflow.jsOwn" $n.advisories | fromJsonArray)
  (include "editflow.jsConsume" $n.advisories | fromJsonArray)
  (include "editflow.jsOwn" $n.work | fromJsonArray)
  (include "editflow.jsOwn" $n.audit | fromJsonArray)
  (include "editflow.kvOwn" $n.ledgerBucket | fromJsonArray)
  (list
    (printf "$JS.API.CONSUMER.CREATE.%s.>" $n.work)
    (printf "$JS.API.CONSUMER.DURABLE.CREATE.%s.>" $n.work)
    (printf "$JS.API.CONSUMER.INFO.%s.>" $n.work)
    (printf "%s.>" $n.auditPrefix)
    (printf "%s.>" $n.completionPrefix)
    (printf "%s.>" $n.reviewPrefix)
    (printf "%s.>" $n.dlqPrefix)
    (printf "%s.>" $n.callbackPrefix)
    (printf "%s.>" $n.workPrefix)
    (printf "%s.>" $n.workerControlPrefix)
    (printf "$JS.API.STREAM.MSG.DELETE.%s" $n.work)) }}
{{- /* The desk (docs/desk.md): the operator writes each namespace's tickets; the gateway
reads them, keeps its claims and publishes the review actions (in the approvals stream). */}}
{{- $gatewayDesk := list $n.reviewActionSubject }}
{{- range $b := include "editflow.deskBuckets" . | fromJsonArray }}
{{- $operatorPub = concat $operatorPub (include "editflow.kvOwn" $b.desk | fromJsonArray) }}
{{- $gatewayDesk = concat $gatewayDesk (include "editflow.kvRead" $b.desk | fromJsonArray) (include "editflow.kvOwn" $b.claims | fromJsonArray) }}
{{- end }}
{{- /* Replies (JetStream API, pulls, KV reads) go to each user's own inbox prefix
(editflow.core.settings.NatsSettings.effective_inbox_prefix): no user reads another's. */}}
{{- $users := .Values.nats.auth.users }}
{{- $inbox := dict }}
{{- range $role := list "operator" "gateway" "publisher" }}
{{- $_ := set $inbox $role (printf "_INBOX_%s.>" (index $users $role)) }}
{{- end }}
{{- $operatorSub := list $inbox.operator (printf "%s.>" $n.resultPrefix) (printf "%s.>" $n.workerStatusPrefix) }}
{{- $gatewayPub := concat $info
  (list $n.approvalSubject $n.withdrawSubject $n.selectSubject)
  (list (printf "$JS.API.STREAM.INFO.%s" $n.approvals))
  (include "editflow.jsRead" $n.completions | fromJsonArray)
  (include "editflow.jsRead" $n.dlq | fromJsonArray)
  (include "editflow.kvOwn" $n.rateBucket | fromJsonArray)
  $gatewayDesk }}
{{- $outcomes := list (printf "%s.>" $n.completionPrefix) (printf "%s.>" $n.reviewPrefix) }}
{{- $publisherPub := concat $info
  (list $n.approvalSubject $n.withdrawSubject $n.selectSubject)
  (list (printf "$JS.API.STREAM.INFO.%s" $n.approvals))
  (include "editflow.jsRead" $n.completions | fromJsonArray) }}
{{- $out := dict
  $users.operator (dict "publish" (dict "allow" $operatorPub) "subscribe" (dict "allow" $operatorSub))
  $users.gateway (dict "publish" (dict "allow" $gatewayPub) "subscribe" (dict "allow" (prepend $outcomes $inbox.gateway)))
  $users.publisher (dict "publish" (dict "allow" $publisherPub) "subscribe" (dict "allow" (append (prepend $outcomes $inbox.publisher) (printf "%s.>" $n.callbackPrefix)))) }}
{{- $models := include "editflow.modelNames" . | fromJsonArray }}
{{- range $w := include "editflow.natsWorkers" . | fromJsonArray }}
{{- $pub := list (printf "%s.%s.>" $n.resultPrefix $w.namespace) (printf "%s.%s.>" $n.workerStatusPrefix $w.namespace) }}
{{- range $model := $models }}
{{- $consumer := printf "worker_%s_%s" $w.namespace $model }}
{{- $pub = concat $pub (list
  (printf "$JS.API.CONSUMER.INFO.%s.%s" $n.work $consumer)
  (printf "$JS.API.CONSUMER.MSG.NEXT.%s.%s" $n.work $consumer)
  (printf "$JS.ACK.%s.%s.>" $n.work $consumer)) }}
{{- end }}
{{- $sub := list (printf "_INBOX_%s.>" $w.user) (printf "%s.%s.>" $n.workerControlPrefix $w.namespace) }}
{{- $_ := set $out $w.user (dict "publish" (dict "allow" $pub) "subscribe" (dict "allow" $sub)) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
A nats-server `authorization` block with every user and its permissions. "passwords" maps a
password key (`operator-password`, `worker-<namespace>-password`, ...) to the password as
written in the config: `$VAR` (an environment variable of the server: the bundled one) or a
quoted literal (authorization.conf for your own server).
Usage: {{ include "editflow.natsAuthorization" (dict "ctx" . "passwords" $passwords) }}
*/}}
{{- define "editflow.natsAuthorization" -}}
{{- $permissions := include "editflow.natsPermissions" .ctx | fromJson }}
authorization {
  users = [
{{- range $u := include "editflow.natsUsers" .ctx | fromJsonArray }}
{{- $allowed := index $permissions $u.user }}
    # {{ $u.role }}{{ with $u.namespace }} of namespace {{ . }}{{ end }}
    {
      user: {{ $u.user | quote }}
      password: {{ index $.passwords $u.key }}
      permissions: {
{{- range $direction := list "publish" "subscribe" }}
        {{ $direction }}: {
          allow: [
{{- range (index $allowed $direction).allow }}
            {{ . | quote }}
{{- end }}
          ]
        }
{{- end }}
      }
    }
{{- end }}
  ]
}
{{- end }}

{{/*
The environment variable of the bundled NATS server that holds a role's password.
Usage: {{ include "editflow.natsPasswordVar" "operator" }} -> OPERATOR_PASSWORD
*/}}
{{- define "editflow.natsPasswordVar" -}}
{{- printf "%s_PASSWORD" (upper .) }}
{{- end }}

{{/*
The NATS credential of one role for its container: user and password (secretKeyRef, never a
plain value), token, or the path of a mounted creds / nkey file.
Usage: {{- include "editflow.natsAuthEnv" (dict "ctx" . "role" "operator") | nindent 12 }}
*/}}
{{- define "editflow.natsAuthEnv" -}}
{{- $auth := .ctx.Values.nats.auth }}
{{- $secret := include "editflow.natsSecretName" .ctx }}
{{- if eq $auth.method "userPassword" }}
- name: EDITFLOW_NATS__USER
  value: {{ index $auth.users .role | quote }}
- name: EDITFLOW_NATS__PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .role }}-password
{{- else if eq $auth.method "token" }}
- name: EDITFLOW_NATS__TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: token
{{- else if eq $auth.method "creds" }}
- name: EDITFLOW_NATS__CREDS_FILE
  value: /etc/editflow/nats-auth/creds
{{- else if eq $auth.method "nkey" }}
- name: EDITFLOW_NATS__NKEY_SEED_FILE
  value: /etc/editflow/nats-auth/nkey-seed
{{- end }}
{{- end }}

{{/*
The event-signing key Secret (key signing-key), or nothing when signing is off.
Usage: {{- with include "editflow.signingSecretName" . }}...{{ end }}
*/}}
{{- define "editflow.signingSecretName" -}}
{{- if .Values.events.signingKey.existingSecret }}
{{- .Values.events.signingKey.existingSecret }}
{{- else if .Values.events.signingKey.enabled }}
{{- printf "%s-events" (include "editflow.fullname" .) }}
{{- end }}
{{- end }}
