{{/* Base name of every object: the release name, suffixed with "-sigil" unless it already says sigil. */}}
{{- define "sigil.fullname" -}}
{{- if contains "sigil" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-sigil" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sigil.issuerName" -}}{{ include "sigil.fullname" . }}-issuer{{- end -}}
{{- define "sigil.operatorName" -}}{{ include "sigil.fullname" . }}-operator{{- end -}}

{{/* The issuer URL: the configured one, else the in-cluster Service URL. */}}
{{- define "sigil.issuerUrl" -}}
{{- if .Values.issuerUrl -}}
{{- .Values.issuerUrl | trimSuffix "/" -}}
{{- else -}}
{{- printf "https://%s.%s.svc" (include "sigil.issuerName" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* Secret with the issuer's serving certificate (tls.crt, tls.key, ca.crt). */}}
{{- define "sigil.tlsSecret" -}}
{{- if .Values.issuer.tls.existingSecret -}}
{{- .Values.issuer.tls.existingSecret -}}
{{- else -}}
{{- include "sigil.issuerName" . }}-tls
{{- end -}}
{{- end -}}

{{- define "sigil.tag" -}}{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}

{{- define "sigil.labels" -}}
app.kubernetes.io/name: sigil
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sigil.operatorSelector" -}}
app.kubernetes.io/name: sigil
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "sigil.issuerSelector" -}}
app.kubernetes.io/name: sigil
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: issuer
{{- end -}}
