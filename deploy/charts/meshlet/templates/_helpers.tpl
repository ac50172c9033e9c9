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

{{/*
podLabels: a pod template's labels, the chart's own (.own, a dict) and the
user's (.user, the component's podLabels; .key names the component in
errors). The chart's are what its Deployments, DaemonSet, Services and PDB
select by, or what keeps the pod out of the mesh: a user label of the same
key with another value is refused, not dropped, so that the mistake is seen
at render time rather than as a workload nothing selects. Values are quoted:
a label's value is a string.
*/}}
{{- define "meshlet.podLabels" -}}
{{- range $k, $v := .user }}
{{- if and (hasKey $.own $k) (ne (toString $v) (get $.own $k)) }}
{{- fail (printf "%s.podLabels sets %s=%v, but the chart sets %s=%s on these pods and selects them by it (or keeps them out of the mesh with it): remove %s from %s.podLabels" $.key $k $v $k (get $.own $k) $k $.key) }}
{{- end }}
{{- end }}
{{- range $k, $v := merge (dict) .own (.user | default dict) }}
{{ $k }}: {{ toString $v | quote }}
{{- end }}
{{- end -}}

{{/*
podAnnotations: a pod template's annotations, the user's (.user) over the
chart's own (.own): no selector reads an annotation, and a user may mean to
change one, e.g. prometheus.io/scrape: "false" where a PodMonitor scrapes
the pod instead.
*/}}
{{- define "meshlet.podAnnotations" -}}
{{- range $k, $v := merge (dict) (.user | default dict) .own }}
{{ $k }}: {{ toString $v | quote }}
{{- end }}
{{- end -}}

{{/*
podPlacement: the pod spec fields a platform team sets per component (.c,
its values): global.imagePullSecrets, priorityClassName, nodeSelector,
tolerations, affinity and, with .spread, topologySpreadConstraints. Each is
left out when empty.
*/}}
{{- define "meshlet.podPlacement" -}}
{{- with .root.Values.global.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end }}
{{- with .c.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .c.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .c.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .spread }}
{{- with .c.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}
