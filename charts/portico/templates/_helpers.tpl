{{/* Common names and labels. */}}
{{- define "portico.name" -}}portico-operator{{- end -}}

{{- define "portico.labels" -}}
app.kubernetes.io/name: portico
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "portico.selectorLabels" -}}
app.kubernetes.io/name: portico
app.kubernetes.io/component: operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "portico.operatorImage" -}}
{{ .Values.operator.image.repository }}:{{ default .Chart.AppVersion .Values.operator.image.tag }}
{{- end -}}

{{- define "portico.proxyImage" -}}
{{ .Values.proxy.image.repository }}:{{ default .Chart.AppVersion .Values.proxy.image.tag }}
{{- end -}}

{{/*
The operator's certificates as YAML {crt, key, ca} (base64). Generated once per render and
memoised in .Release-scoped state, so the Secret and the webhooks' caBundle agree; taken from the
existing Secret on upgrade, so they survive upgrades.
*/}}
{{- define "portico.certs" -}}
{{- if not (hasKey .Values "__porticoCerts") -}}
{{- $name := include "portico.name" . -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (printf "%s-tls" $name) -}}
{{- if and $existing $existing.data -}}
{{- $_ := set .Values "__porticoCerts" (dict "crt" (index $existing.data "tls.crt") "key" (index $existing.data "tls.key") "ca" (index $existing.data "ca.crt")) -}}
{{- else -}}
{{- $caCert := genCA "portico-ca" (int .Values.tls.validityDays) -}}
{{- $svc := printf "%s.%s.svc" $name .Release.Namespace -}}
{{- $cert := genSignedCert $svc nil (list $svc (printf "%s.cluster.local" $svc) $name (printf "%s.%s" $name .Release.Namespace)) (int .Values.tls.validityDays) $caCert -}}
{{- $_ := set .Values "__porticoCerts" (dict "crt" ($cert.Cert | b64enc) "key" ($cert.Key | b64enc) "ca" ($caCert.Cert | b64enc)) -}}
{{- end -}}
{{- end -}}
{{- toYaml (get .Values "__porticoCerts") -}}
{{- end -}}

{{- define "portico.caBundle" -}}
{{- (include "portico.certs" . | fromYaml).ca -}}
{{- end -}}
