{{/* labels: the common labels of every object, for a component name. */}}
{{- define "meshlet.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: meshlet
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
meshlet.dev/profile: {{ .root.Values.profile }}
{{- end -}}

{{/* image: <hub>/<component>:<tag>. */}}
{{- define "meshlet.image" -}}
{{ .root.Values.global.hub }}/{{ .component }}:{{ .root.Values.global.tag }}
{{- end -}}
