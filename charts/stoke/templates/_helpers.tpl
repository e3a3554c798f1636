{{/* Names and labels shared by every template. */}}

{{- define "stoke.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-stoke, or the release name when it already says stoke; at most 40
characters, so "<fullname>-activator-xxxxxxxxxx-xxxxx" pod names stay DNS labels. */}}
{{- define "stoke.fullname" -}}
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

{{- define "stoke.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "stoke.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "controller") */}}
{{- define "stoke.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stoke.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "stoke.componentLabels" -}}
{{ include "stoke.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The labels the controller puts on every function pod it creates
(docs/kubernetes.md): the NetworkPolicy selects them. */}}
{{- define "stoke.functionPodLabels" -}}
stoke.dev/managed: "true"
stoke.dev/instance: {{ .Release.Name }}
{{- end -}}

{{- define "stoke.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "stoke.controllerServiceAccount" -}}
{{- if .Values.controller.serviceAccount.create -}}
{{- default (printf "%s-controller" (include "stoke.fullname" .)) .Values.controller.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.controller.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stoke.activatorServiceAccount" -}}
{{- if .Values.activator.serviceAccount.create -}}
{{- default (printf "%s-activator" (include "stoke.fullname" .)) .Values.activator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.activator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stoke.functionServiceAccount" -}}
{{- if .Values.functions.serviceAccount.create -}}
{{- default (printf "%s-function" (include "stoke.fullname" .)) .Values.functions.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.functions.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stoke.eventsServiceAccount" -}}
{{- if .Values.events.serviceAccount.create -}}
{{- default (printf "%s-events" (include "stoke.fullname" .)) .Values.events.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.events.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "stoke.eventsTokenSecret" -}}
{{- default (printf "%s-events-token" (include "stoke.fullname" .)) .Values.events.token.existingSecret -}}
{{- end -}}

{{/* The events token volume and its mount: stoke-events and the activators. */}}
{{- define "stoke.eventsTokenVolume" -}}
- name: events-token
  secret:
    secretName: {{ include "stoke.eventsTokenSecret" . }}
    defaultMode: 0440
    items:
      - key: token
        path: token
{{- end -}}
{{- define "stoke.eventsTokenMount" -}}
- name: events-token
  mountPath: /var/run/stoke/events
  readOnly: true
{{- end -}}

{{- define "stoke.tokenSecret" -}}
{{- default (printf "%s-channel-token" (include "stoke.fullname" .)) .Values.channel.token.existingSecret -}}
{{- end -}}

{{- define "stoke.leaseName" -}}
{{- default (printf "%s-controller" (include "stoke.fullname" .)) .Values.controller.leaderElection.leaseName -}}
{{- end -}}

{{/* host:port the daemons listen on: the pod IP from the downward API, or all addresses. */}}
{{- define "stoke.listen" -}}
{{- if .ctx.Values.listenOnPodIP -}}
$(POD_IP):{{ .port }}
{{- else -}}
0.0.0.0:{{ .port }}
{{- end -}}
{{- end -}}

{{- define "stoke.activatorURL" -}}
{{- printf "http://%s-activator.%s.svc:%v" (include "stoke.fullname" .) .Release.Namespace .Values.activator.service.port -}}
{{- end -}}

{{/* The env the daemons get from the downward API. */}}
{{- define "stoke.podEnv" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* The token volume and its mount, shared by both daemons. */}}
{{- define "stoke.tokenVolume" -}}
- name: channel-token
  secret:
    secretName: {{ include "stoke.tokenSecret" . }}
    defaultMode: 0440
    items:
      - key: token
        path: token
{{- end -}}
{{- define "stoke.tokenMount" -}}
- name: channel-token
  mountPath: /var/run/stoke/channel
  readOnly: true
{{- end -}}

{{/* The pod's network: the node's when hostNetwork is on (cluster DNS still used). */}}
{{- define "stoke.podNetwork" -}}
{{- if .Values.hostNetwork -}}
hostNetwork: true
dnsPolicy: ClusterFirstWithHostNet
{{- end -}}
{{- end -}}
