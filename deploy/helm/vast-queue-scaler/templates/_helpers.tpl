{{/* Names and labels shared by every template. */}}

{{- define "vqs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vqs.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "vqs.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "vqs.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "vqs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vqs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vqs.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "vqs.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vqs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vqs.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vqs.leaseName" -}}
{{- default (include "vqs.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Only leader election makes more than one replica safe. */}}
{{- define "vqs.replicas" -}}
{{- if .Values.leaderElection.enabled }}{{ .Values.replicaCount }}{{ else }}1{{ end }}
{{- end }}
