{{/* Chart name, overridable with nameOverride. */}}
{{- define "titan-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name used as the prefix of every object: fullnameOverride, else the release
name when it already contains the chart name, else RELEASE-CHART.
*/}}
{{- define "titan-operator.fullname" -}}
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

{{/* chart label value: NAME-VERSION. */}}
{{- define "titan-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them on upgrade. */}}
{{- define "titan-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "titan-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "titan-operator.labels" -}}
helm.sh/chart: {{ include "titan-operator.chart" . }}
{{ include "titan-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: titan
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* ServiceAccount the operator runs as. */}}
{{- define "titan-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "titan-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create=false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference repository:tag, tag defaulting to appVersion. */}}
{{- define "titan-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Name of the leader-election Lease (namespaced, in the release namespace). */}}
{{- define "titan-operator.leaseName" -}}
{{- if .Values.leaderElection.leaseName }}
{{- .Values.leaderElection.leaseName }}
{{- else }}
{{- printf "%s-leader" (include "titan-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
