{{/*
The chart name, for the app.kubernetes.io/name label.
*/}}
{{- define "task-system.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Prefix of every object name: the release name unless fullnameOverride is set,
so that the planner Service is `<release>-planner`. Leaves room for the
longest suffix a flavor name can add.
*/}}
{{- define "task-system.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{- define "task-system.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The recommended labels. Call with (dict "ctx" $ "component" "planner").
*/}}
{{- define "task-system.labels" -}}
helm.sh/chart: {{ include "task-system.chart" .ctx }}
{{ include "task-system.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: task-system
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels. Call with (dict "ctx" $ "component" "mul").
*/}}
{{- define "task-system.selectorLabels" -}}
app.kubernetes.io/name: {{ include "task-system.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{- define "task-system.plannerName" -}}
{{- printf "%s-planner" (include "task-system.fullname" .) }}
{{- end }}

{{/*
The planner's URL as workers use it: its Service, by name.
*/}}
{{- define "task-system.plannerUrl" -}}
{{- printf "http://%s:%d" (include "task-system.plannerName" .) (int .Values.planner.service.port) }}
{{- end }}

{{- define "task-system.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}

{{- define "task-system.secretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-token" (include "task-system.fullname" .) }}
{{- end }}
{{- end }}

{{- define "task-system.secretKey" -}}
{{- if .Values.auth.existingSecret }}{{ .Values.auth.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/*
The shared token: `auth.token` if given, else the one already in the
release's Secret (so `helm upgrade` keeps it), else a new random one. Computed
once per render (memoized in .Values) so the Secret and the checksum
annotations agree.
*/}}
{{- define "task-system.token" -}}
{{- if not (hasKey .Values "__token") }}
{{- $token := .Values.auth.token }}
{{- if not $token }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "task-system.secretName" .) }}
{{- if and $existing $existing.data (hasKey $existing.data "token") }}
{{- $token = index $existing.data "token" | b64dec }}
{{- else }}
{{- $token = randAlphaNum 40 }}
{{- end }}
{{- end }}
{{- $_ := set .Values "__token" $token }}
{{- end }}
{{- index .Values "__token" }}
{{- end }}

{{/*
Pod annotations every pod gets: Prometheus scraping, and a checksum of the
token so that pods restart when it changes (not of the modules: a changed
modules ConfigMap must reach running pods without restarting them).
Call with (dict "ctx" $ "port" 8080).
*/}}
{{- define "task-system.podAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | toString | quote }}
prometheus.io/path: {{ .ctx.Values.metrics.path | quote }}
{{- end }}
{{- if not .ctx.Values.auth.existingSecret }}
checksum/token: {{ include "task-system.token" .ctx | sha256sum | trunc 16 | quote }}
{{- end }}
{{- end }}

{{/*
The TOKEN environment variable, from the Secret.
*/}}
{{- define "task-system.tokenEnv" -}}
- name: TOKEN_FILE
  value: {{ include "task-system.tokenDir" . }}/token
{{- end }}

{{/*
The token reaches the containers as a file from the Secret (`TOKEN_FILE`),
never as an environment variable: those show in `kubectl describe`, in
crash dumps and in every child process.
*/}}
{{- define "task-system.tokenDir" -}}/var/run/secrets/task-system{{- end }}

{{- define "task-system.tokenVolumeMount" -}}
- name: token
  mountPath: {{ include "task-system.tokenDir" . }}
  readOnly: true
{{- end }}

{{/*
The client-only token (`auth.clientToken.existingSecret`), for the planner:
a file from that Secret (`CLIENT_TOKEN_FILE`), in a directory of its own
beside the shared token's, not inside that volume.
*/}}
{{- define "task-system.clientTokenDir" -}}/var/run/secrets/task-system-client{{- end }}

{{- define "task-system.clientTokenEnv" -}}
{{- if .Values.auth.clientToken.existingSecret }}
- name: CLIENT_TOKEN_FILE
  value: {{ include "task-system.clientTokenDir" . }}/token
{{- end }}
{{- end }}

{{- define "task-system.clientTokenVolumeMount" -}}
{{- if .Values.auth.clientToken.existingSecret }}
- name: client-token
  mountPath: {{ include "task-system.clientTokenDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "task-system.clientTokenVolume" -}}
{{- if .Values.auth.clientToken.existingSecret }}
- name: client-token
  secret:
    secretName: {{ .Values.auth.clientToken.existingSecret }}
    defaultMode: 288
    items:
      - key: {{ .Values.auth.clientToken.existingSecretKey }}
        path: token
{{- end }}
{{- end }}

{{/*
The Secret and key a client presents when reads need a token (the
ServiceMonitor, NOTES): the client token if there is one, else the shared.
*/}}
{{- define "task-system.clientSecretName" -}}
{{- default (include "task-system.secretName" .) .Values.auth.clientToken.existingSecret }}
{{- end }}

{{- define "task-system.clientSecretKey" -}}
{{- if .Values.auth.clientToken.existingSecret }}{{ .Values.auth.clientToken.existingSecretKey }}{{ else }}{{ include "task-system.secretKey" . }}{{ end }}
{{- end }}

{{- define "task-system.tokenVolume" -}}
- name: token
  secret:
    secretName: {{ include "task-system.secretName" . }}
    # 0440: root and the pod's fsGroup (podSecurityContext.fsGroup) only.
    defaultMode: 288
    items:
      - key: {{ include "task-system.secretKey" . }}
        path: token
{{- end }}

{{/*
The flavors, built-in then extra, as a YAML map name -> values; each value
completed from `worker` where the flavor leaves a key empty. Read it back
with fromYaml.
*/}}
{{- define "task-system.flavors" -}}
{{- $w := .Values.worker }}
{{- $all := dict "general" .Values.general "mul" .Values.mul "add" .Values.add }}
{{- range $name, $f := .Values.extraFlavors }}
{{- $_ := set $all $name $f }}
{{- end }}
{{- $out := dict }}
{{- range $name, $f := $all }}
{{- $f = default dict $f }}
{{- $c := dict "replicas" (int (default 0 $f.replicas)) "ops" (default list $f.ops) }}
{{- range $key := list "slots" "workMs" "terminationGracePeriodSeconds" }}
{{- $v := index $f $key }}
{{- if kindIs "invalid" $v }}{{ $v = index $w $key }}{{ end }}
{{- $_ := set $c $key $v }}
{{- end }}
{{- range $key := list "resources" "nodeSelector" "tolerations" "affinity" "podAnnotations" }}
{{- $_ := set $c $key (default (index $w $key) (index $f $key)) }}
{{- end }}
{{- $pdb := deepCopy (default dict $w.podDisruptionBudget) }}
{{- range $k, $v := (default dict $f.podDisruptionBudget) }}
{{- $_ := set $pdb $k $v }}
{{- end }}
{{- $_ := set $c "podDisruptionBudget" $pdb }}
{{- if not (kindIs "string" $c.workMs) }}
{{- $_ := set $c "workMs" (printf "%d" (int64 $c.workMs)) }}
{{- end }}
{{- include "task-system.validateFlavor" (dict "ctx" $ "name" $name "flavor" $c) }}
{{- $_ := set $out $name $c }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/*
Seconds a stopping worker gets to finish its tasks: the longest task (top of
workMs plus the op timeout) plus 15 s, at least 30. Call with the flavor map
and the root as (dict "flavor" $f "ctx" $).
*/}}
{{- define "task-system.gracePeriod" -}}
{{- if not (kindIs "invalid" .flavor.terminationGracePeriodSeconds) }}
{{- .flavor.terminationGracePeriodSeconds | int }}
{{- else }}
{{- $top := last (splitList "-" (toString .flavor.workMs)) | trim | int64 }}
{{- $ms := add $top (int64 .ctx.Values.worker.opTimeoutMs) }}
{{- max 30 (add (div (add $ms 999) 1000) 15) }}
{{- end }}
{{- end }}

{{/*
The ops the release's workers offer (flavors with replicas > 0), sorted and
comma-separated.
*/}}
{{- define "task-system.offeredOps" -}}
{{- $ops := list }}
{{- range $name, $f := (include "task-system.flavors" . | fromYaml) }}
{{- if gt (int $f.replicas) 0 }}
{{- $ops = concat $ops $f.ops }}
{{- end }}
{{- end }}
{{- $ops | uniq | sortAlpha | join "," }}
{{- end }}

{{/*
LOG_FORMAT and LOG, the same for every container.
*/}}
{{- define "task-system.loggingEnv" -}}
- name: LOG_FORMAT
  value: {{ .Values.logging.format | quote }}
- name: LOG
  value: {{ .Values.logging.level | quote }}
{{- end }}

{{/*
Checks of one flavor that the schema cannot express; fails the render with a
message naming the value. Called by task-system.flavors with
(dict "ctx" $ "name" NAME "flavor" RESOLVED-FLAVOR).
*/}}
{{- define "task-system.validateFlavor" -}}
{{- $root := .ctx }}
{{- $name := .name }}
{{- $c := .flavor }}
{{- $key := ternary $name (printf "extraFlavors.%s" $name) (has $name (list "general" "mul" "add")) }}
{{- $bounds := splitList "-" (toString $c.workMs) }}
{{- if gt (first $bounds | trim | int64) (last $bounds | trim | int64) }}
{{- fail (printf "%s.workMs: the range %q starts after its end" $key (toString $c.workMs)) }}
{{- end }}
{{- if and (gt (int $c.replicas) 0) (ge (add (last $bounds | trim | int64) (int64 $root.Values.worker.opTimeoutMs)) (int64 $root.Values.planner.dispatchTimeoutMs)) }}
{{- fail (printf "%s.workMs: tasks may take up to %s ms plus worker.opTimeoutMs, which planner.dispatchTimeoutMs (%d ms) does not allow" $key (last $bounds | trim) (int64 $root.Values.planner.dispatchTimeoutMs)) }}
{{- end }}
{{- if gt (int $c.replicas) 0 }}
{{- range $op := $c.ops }}
{{- if and (not (has $op (list "add" "mul"))) (not $root.Values.modules.existingConfigMap) (not (hasKey (default dict $root.Values.modules.files) (printf "%s.wasm" $op))) }}
{{- fail (printf "%s.ops: `%s` is not built into the worker (add, mul): give its module as modules.files.%s\\.wasm (base64) or in modules.existingConfigMap" $key $op $op) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
