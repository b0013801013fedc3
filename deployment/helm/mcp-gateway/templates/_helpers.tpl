{{/* Names: the release name, or <release>-mcp-gateway when it does not contain the chart's. */}}
{{- define "mcp-gateway.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mcp-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mcp-gateway
{{- end -}}

{{/* Selector labels of one component: include "mcp-gateway.selector" (list . "gateway") */}}
{{- define "mcp-gateway.selector" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ $ctx.Chart.Name }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "mcp-gateway.image" -}}
{{- $ctx := index . 0 -}}
{{- $tag := $ctx.Values.image.tag | default $ctx.Chart.AppVersion -}}
{{- if $ctx.Values.image.registry -}}
{{- printf "%s/%s/%s:%s" $ctx.Values.image.registry $ctx.Values.image.repository (index . 1) $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $ctx.Values.image.repository (index . 1) $tag -}}
{{- end -}}
{{- end -}}

{{- define "mcp-gateway.redisSecret" -}}
{{- if .Values.redis.enabled -}}
{{- .Values.redis.existingSecret | default (printf "%s-redis" (include "mcp-gateway.fullname" .)) -}}
{{- else -}}
{{- .Values.externalRedis.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "mcp-gateway.redisUrl" -}}
{{- if .Values.redis.enabled -}}
{{- printf "redis://%s-redis:6379/0" (include "mcp-gateway.fullname" .) -}}
{{- else -}}
{{- required "redis.enabled=false needs externalRedis.url (redis://host:6379/0 or rediss://...)" .Values.externalRedis.url -}}
{{- end -}}
{{- end -}}

{{- define "mcp-gateway.redisPasswordKey" -}}
{{- if .Values.redis.enabled -}}password{{- else -}}{{ .Values.externalRedis.passwordKey }}{{- end -}}
{{- end -}}

{{/* A TOML table's keys from a map: key = <JSON value> (JSON strings, numbers, booleans and
     arrays of them are valid TOML). */}}
{{- define "mcp-gateway.tomlKeys" -}}
{{- range $k, $v := . }}
{{ $k }} = {{ toJson $v }}
{{- end -}}
{{- end -}}

{{/* The pod spec both binaries share: include "mcp-gateway.podSpec" (list . "gateway" values) */}}
{{- define "mcp-gateway.podSpec" -}}
{{- $ctx := index . 0 -}}
{{- $component := index . 1 -}}
{{- $v := index . 2 -}}
{{- $binary := ternary "gateway-service" "gateway-management" (eq $component "gateway") -}}
serviceAccountName: {{ include "mcp-gateway.fullname" $ctx }}{{ if ne $component "gateway" }}-{{ $component }}{{ end }}
enableServiceLinks: false
{{- with $ctx.Values.image.pullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
# Longer than shutdown_delay + shutdown_grace.
terminationGracePeriodSeconds: {{ add (include "mcp-gateway.seconds" $ctx.Values.config.shutdownDelay) (include "mcp-gateway.seconds" $ctx.Values.config.shutdownGrace) 10 }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
topologySpreadConstraints:
  {{- range list "kubernetes.io/hostname" "topology.kubernetes.io/zone" }}
  - maxSkew: 1
    topologyKey: {{ . }}
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "mcp-gateway.selector" (list $ctx $component) | nindent 8 }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  - name: {{ $component }}
    image: {{ include "mcp-gateway.image" (list $ctx $binary) }}
    imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
    args: ["--config", "/etc/mcp-gateway/gateway.toml"]
    env:
      - name: MCP_GATEWAY_LISTEN
        value: 0.0.0.0:8080
      - name: MCP_GATEWAY_ADMIN_LISTEN
        value: 0.0.0.0:9090
      {{- if eq $component "gateway" }}
      - name: MCP_GATEWAY_MANAGEMENT
        value: "false"
      {{- end }}
      - name: MCP_GATEWAY_DATA_DIR
        value: /var/lib/mcp-gateway
      {{- if include "mcp-gateway.redisSecret" $ctx }}
      - name: MCP_GATEWAY_REDIS_PASSWORD
        valueFrom:
          secretKeyRef:
            name: {{ include "mcp-gateway.redisSecret" $ctx }}
            key: {{ include "mcp-gateway.redisPasswordKey" $ctx }}
      {{- end }}
    ports:
      - name: http
        containerPort: 8080
      - name: admin
        containerPort: 9090
    readinessProbe:
      httpGet:
        path: /readyz
        port: admin
      periodSeconds: 2
      failureThreshold: 1
    livenessProbe:
      httpGet:
        path: /healthz
        port: admin
      periodSeconds: 10
      failureThreshold: 3
    resources:
      {{- toYaml $v.resources | nindent 6 }}
    securityContext:
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities:
        drop: ["ALL"]
    volumeMounts:
      - name: config
        mountPath: /etc/mcp-gateway
        readOnly: true
      - name: data
        mountPath: /var/lib/mcp-gateway
volumes:
  - name: config
    configMap:
      name: {{ include "mcp-gateway.fullname" $ctx }}-config
  - name: data
    emptyDir:
      sizeLimit: 16Mi
{{- end -}}

{{/* Whole seconds of a duration value: 30s, 5m, 1h, or a plain number of seconds. */}}
{{- define "mcp-gateway.seconds" -}}
{{- $s := toString . -}}
{{- if hasSuffix "ms" $s -}}1
{{- else if hasSuffix "s" $s -}}{{ trimSuffix "s" $s | int }}
{{- else if hasSuffix "m" $s -}}{{ mul (trimSuffix "m" $s | int) 60 }}
{{- else if hasSuffix "h" $s -}}{{ mul (trimSuffix "h" $s | int) 3600 }}
{{- else -}}{{ $s | int }}
{{- end -}}
{{- end -}}
