{{/*
Helpers of the synth chart. The Ray templates share one RayClusterSpec builder
("synth.rayClusterSpec") and one RayJobSpec builder ("synth.rayJobSpec") so that the
RayCluster, the RayJobs, the RayCronJob / nightly ConfigMap and the RayService stay alike.
*/}}

{{/* Chart name. */}}
{{- define "synth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Resource name prefix, at most 32 characters: KubeRay derives longer names from it
(a RayJob's RayCluster is "<rayjob>-xxxxx", RayJob and RayService names must stay <= 47).
*/}}
{{- define "synth.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 32 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 32 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart label value. */}}
{{- define "synth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels (stable across upgrades). */}}
{{- define "synth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "synth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Common labels. */}}
{{- define "synth.labels" -}}
helm.sh/chart: {{ include "synth.chart" . }}
{{ include "synth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: synth
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Container image of the Ray pods. */}}
{{- define "synth.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* ServiceAccount of the Ray pods. */}}
{{- define "synth.rayServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-ray" (include "synth.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the serving pods' ServiceAccount (without serviceAccount.create: serveName, else the Ray one). */}}
{{- define "synth.serveServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-serve" (include "synth.fullname" .)) .Values.serviceAccount.serveName }}
{{- else }}
{{- default (include "synth.rayServiceAccountName" .) .Values.serviceAccount.serveName }}
{{- end }}
{{- end }}

{{/* Name of the object-storage Secret loaded with envFrom, or "" for none. */}}
{{- define "synth.objectStorageSecretName" -}}
{{- if .Values.objectStorage.credentials.accessKeyId }}
{{- printf "%s-object-storage" (include "synth.fullname" .) }}
{{- else if .Values.objectStorage.existingSecret }}
{{- .Values.objectStorage.existingSecret }}
{{- end }}
{{- end }}

{{/* Name of the Secret holding the endpoint bearer token. */}}
{{- define "synth.serveTokenSecretName" -}}
{{- if .Values.serve.auth.token }}
{{- printf "%s-serve-token" (include "synth.fullname" .) }}
{{- else if .Values.serve.auth.existingSecret }}
{{- .Values.serve.auth.existingSecret }}
{{- else }}
{{- fail "serve.auth.enabled is true: set serve.auth.token or serve.auth.existingSecret (or serve.auth.enabled=false)" }}
{{- end }}
{{- end }}

{{/* Key of the bearer token inside its Secret. */}}
{{- define "synth.serveTokenSecretKey" -}}
{{- if .Values.serve.auth.token }}token{{ else }}{{ .Values.serve.auth.existingSecretKey | default "token" }}{{ end }}
{{- end }}

{{/*
Worker group ids to render, as a JSON list.
Input: dict "root" $ "select" <list of ids; empty = all enabled>.
*/}}
{{- define "synth.workerGroupIds" -}}
{{- $root := .root }}
{{- $all := $root.Values.ray.workerGroups | default dict }}
{{- $ids := list }}
{{- if .select }}
{{- range $id := .select }}
{{- $g := get $all $id }}
{{- if not $g }}
{{- fail (printf "unknown worker group %q (known: %s)" $id (keys $all | sortAlpha | join ", ")) }}
{{- end }}
{{- if not $g.enabled }}
{{- fail (printf "worker group %q is selected but ray.workerGroups.%s.enabled is false" $id $id) }}
{{- end }}
{{- $ids = append $ids $id }}
{{- end }}
{{- else }}
{{- range $id := keys $all | sortAlpha }}
{{- if (get $all $id).enabled }}
{{- $ids = append $ids $id }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $ids }}
{{- end }}

{{/*
Runtime env of a job or app as YAML text ("" when empty).
Input: dict "root" $ "override" <mapping>.
*/}}
{{- define "synth.runtimeEnvYAML" -}}
{{- $env := mergeOverwrite (deepCopy (.root.Values.jobs.runtimeEnv | default dict)) (deepCopy (.override | default dict)) }}
{{- if hasKey $env "env_vars" }}
{{- /* Ray requires string values in env_vars ("--set x=7" gives a number). */}}
{{- $vars := dict }}
{{- range $k, $val := (get $env "env_vars" | default dict) }}
{{- $_ := set $vars $k (toString $val) }}
{{- end }}
{{- $_ := set $env "env_vars" $vars }}
{{- end }}
{{- if $env }}
{{- toYaml $env }}
{{- end }}
{{- end }}

{{/*
A Ray node pod template (core PodTemplateSpec).
Input: dict
  "root"     $
  "role"     "head" | "worker"
  "group"    the group's values (ray.head or ray.workerGroups.<id>)
  "workload" cluster | train | synthesize | nightly | serve
  "extraEnv" list of EnvVar added for this workload
  "serve"    bool: expose the Serve HTTP port
*/}}
{{- define "synth.rayPodTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $g := .group }}
{{- $role := .role }}
{{- $res := deepCopy ($g.resources | default dict) }}
{{- $gpus := int ($g.gpusPerWorker | default 0) }}
{{- if gt $gpus 0 }}
{{- $gpuName := $g.gpuResourceName | default "nvidia.com/gpu" }}
{{- $limits := deepCopy (get $res "limits" | default dict) }}
{{- $_ := set $limits $gpuName $gpus }}
{{- $_ := set $res "limits" $limits }}
{{- $requests := deepCopy (get $res "requests" | default dict) }}
{{- $_ := set $requests $gpuName $gpus }}
{{- $_ := set $res "requests" $requests }}
{{- end }}
{{- $serving := eq .workload "serve" }}
{{- $secretName := ternary $v.objectStorage.serveExistingSecret (include "synth.objectStorageSecretName" $root) $serving }}
metadata:
  labels:
    {{- include "synth.labels" $root | nindent 4 }}
    app.kubernetes.io/component: ray-{{ $role }}
    synth.io/workload: {{ .workload }}
    {{- with $g.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $g.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ ternary (include "synth.serveServiceAccountName" $root) (include "synth.rayServiceAccountName" $root) $serving }}
  automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.ray.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $g.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray-{{ $role }}
      image: {{ include "synth.image" $root | quote }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      ports:
        {{- if eq $role "head" }}
        - name: gcs-server
          containerPort: {{ int $v.ray.gcsPort }}
          protocol: TCP
        - name: dashboard
          containerPort: {{ int $v.ray.dashboardPort }}
          protocol: TCP
        - name: client
          containerPort: {{ int $v.ray.clientPort }}
          protocol: TCP
        {{- end }}
        {{- if .serve }}
        - name: serve
          containerPort: {{ int $v.serve.httpPort }}
          protocol: TCP
        {{- end }}
        - name: metrics
          containerPort: {{ int $v.ray.metricsExportPort }}
          protocol: TCP
      env:
        {{- range $name, $value := $v.env }}
        - name: {{ $name }}
          value: {{ $value | toString | quote }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $g.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with .extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- if $secretName }}
      envFrom:
        - secretRef:
            name: {{ $secretName }}
      {{- end }}
      {{- with $res }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.ray.containerSecurityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      lifecycle:
        preStop:
          exec:
            command: ["/bin/sh", "-c", "ray stop"]
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if $v.ray.sharedMemory.enabled }}
        - name: dshm
          mountPath: /dev/shm
        {{- end }}
        {{- with $v.ray.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: tmp
      emptyDir:
        {{- with $v.ray.tmpSizeLimit }}
        sizeLimit: {{ . }}
        {{- else }}
        {}
        {{- end }}
    {{- if $v.ray.sharedMemory.enabled }}
    - name: dshm
      emptyDir:
        medium: Memory
        {{- with $v.ray.sharedMemory.sizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- end }}
    {{- with $v.ray.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* rayStartParams block body (string values). Input: dict of params. */}}
{{- define "synth.rayStartParams" -}}
{{- if . }}
{{- range $k, $val := . }}
{{ $k | quote }}: {{ $val | toString | quote }}
{{- end }}
{{- else }}
{}
{{- end }}
{{- end }}

{{/*
A RayClusterSpec.
Input: dict "root" $ "workload" <name> "select" <group ids> "extraEnv" <EnvVar list>
            "serve" <bool>.
*/}}
{{- define "synth.rayClusterSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $ctx := . }}
{{- $headParams := mergeOverwrite (deepCopy ($v.ray.head.rayStartParams | default dict)) (dict "dashboard-host" "0.0.0.0" "metrics-export-port" (toString (int $v.ray.metricsExportPort))) }}
rayVersion: {{ $v.rayVersion | toString | quote }}
{{- with $v.ray.auth.mode }}
{{- if not (has . (list "token" "disabled")) }}
{{- fail (printf "ray.auth.mode must be token, disabled or empty, not %q" .) }}
{{- end }}
authOptions:
  mode: {{ . }}
  {{- with $v.ray.auth.secretName }}
  secretName: {{ . }}
  {{- end }}
{{- end }}
enableInTreeAutoscaling: {{ $v.ray.enableInTreeAutoscaling }}
{{- if $v.ray.enableInTreeAutoscaling }}
autoscalerOptions:
  {{- with $v.ray.autoscalerOptions.idleTimeoutSeconds }}
  idleTimeoutSeconds: {{ int . }}
  {{- end }}
  {{- with $v.ray.autoscalerOptions.upscalingMode }}
  upscalingMode: {{ . }}
  {{- end }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- with $v.ray.autoscalerOptions.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.ray.containerSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
headGroupSpec:
  serviceType: {{ $v.ray.head.serviceType | default "ClusterIP" }}
  rayStartParams:
    {{- include "synth.rayStartParams" $headParams | trim | nindent 4 }}
  template:
    {{- include "synth.rayPodTemplate" (dict "root" $root "role" "head" "group" $v.ray.head "workload" .workload "extraEnv" .extraEnv "serve" .serve) | trim | nindent 4 }}
{{- $ids := include "synth.workerGroupIds" (dict "root" $root "select" .select) | fromJsonArray }}
{{- if $ids }}
workerGroupSpecs:
  {{- range $id := $ids }}
  {{- $g := get $v.ray.workerGroups $id }}
  {{- $params := mergeOverwrite (deepCopy ($g.rayStartParams | default dict)) (dict "metrics-export-port" (toString (int $v.ray.metricsExportPort))) }}
  {{- if gt (int $g.minReplicas) (int $g.maxReplicas) }}
  {{- fail (printf "ray.workerGroups.%s: minReplicas (%d) > maxReplicas (%d)" $id (int $g.minReplicas) (int $g.maxReplicas)) }}
  {{- end }}
  - groupName: {{ $g.groupName | default $id }}
    replicas: {{ int $g.replicas }}
    minReplicas: {{ int $g.minReplicas }}
    maxReplicas: {{ int $g.maxReplicas }}
    rayStartParams:
      {{- include "synth.rayStartParams" $params | trim | nindent 6 }}
    template:
      {{- include "synth.rayPodTemplate" (dict "root" $root "role" "worker" "group" $g "workload" $ctx.workload "extraEnv" $ctx.extraEnv "serve" $ctx.serve) | trim | nindent 6 }}
  {{- end }}
{{- else }}
workerGroupSpecs: []
{{- end }}
{{- end }}

{{/* Entrypoint of a job. Input: dict "job" <values> "module" <jobs.x>. */}}
{{- define "synth.entrypoint" -}}
{{- if .job.entrypoint }}
{{- .job.entrypoint }}
{{- else }}
{{- if not .job.config }}
{{- fail (printf "set a config URI for %s (or a full entrypoint)" .module) }}
{{- end }}
{{- $parts := list "python" "-m" .module "--config" (toString .job.config) }}
{{- range .job.extraArgs }}
{{- $parts = append $parts (toString .) }}
{{- end }}
{{- join " " $parts }}
{{- end }}
{{- end }}

{{/*
A RayJobSpec.
Input: dict "root" $ "workload" <name> "module" <python module> "job" <values>
            "allowSuspend" <bool>.
*/}}
{{- define "synth.rayJobSpec" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
{{- $jobs := $v.jobs }}
{{- $runtimeEnv := include "synth.runtimeEnvYAML" (dict "root" $root "override" .job.runtimeEnv) }}
entrypoint: {{ include "synth.entrypoint" (dict "job" .job "module" .module) | quote }}
{{- if $runtimeEnv }}
runtimeEnvYAML: |
  {{- $runtimeEnv | nindent 2 }}
{{- end }}
submissionMode: {{ $jobs.submissionMode | default "K8sJobMode" }}
backoffLimit: {{ int $jobs.backoffLimit }}
{{- if gt (int $jobs.activeDeadlineSeconds) 0 }}
activeDeadlineSeconds: {{ int $jobs.activeDeadlineSeconds }}
{{- end }}
{{- if and .allowSuspend .job.suspend }}
suspend: true
{{- end }}
{{- if $jobs.useExistingCluster }}
{{- if not $v.rayCluster.enabled }}
{{- fail "jobs.useExistingCluster needs rayCluster.enabled" }}
{{- end }}
clusterSelector:
  ray.io/cluster: {{ include "synth.fullname" $root }}-cluster
{{- else }}
shutdownAfterJobFinishes: {{ $jobs.shutdownAfterJobFinishes }}
ttlSecondsAfterFinished: {{ int $jobs.ttlSecondsAfterFinished }}
rayClusterSpec:
  {{- include "synth.rayClusterSpec" (dict "root" $root "workload" .workload "select" .job.workerGroups "extraEnv" (.extraEnv | default list) "serve" false) | trim | nindent 2 }}
{{- end }}
{{- /* with the NetworkPolicy on, a K8sJobMode submitter must carry the release's labels to reach the dashboard */}}
{{- if or $jobs.submitterPodTemplate.enabled (and $v.networkPolicy.enabled (eq ($jobs.submissionMode | default "K8sJobMode") "K8sJobMode")) }}
submitterPodTemplate:
  metadata:
    labels:
      {{- include "synth.labels" $root | nindent 6 }}
      app.kubernetes.io/component: ray-job-submitter
      synth.io/workload: {{ .workload }}
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "synth.rayServiceAccountName" $root }}
    automountServiceAccountToken: {{ $v.serviceAccount.automountServiceAccountToken }}
    {{- with $v.imagePullSecrets }}
    imagePullSecrets:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $jobs.submitterPodTemplate.nodeSelector }}
    nodeSelector:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $jobs.submitterPodTemplate.tolerations }}
    tolerations:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $v.ray.podSecurityContext }}
    securityContext:
      {{- toYaml . | nindent 6 }}
    {{- end }}
    containers:
      - name: ray-job-submitter
        image: {{ include "synth.image" $root | quote }}
        imagePullPolicy: {{ $v.image.pullPolicy }}
        env:
          {{- range $name, $value := $v.env }}
          - name: {{ $name }}
            value: {{ $value | toString | quote }}
          {{- end }}
          - name: HOME
            value: /tmp
        {{- with $jobs.submitterPodTemplate.resources }}
        resources:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $v.ray.containerSecurityContext }}
        securityContext:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        volumeMounts:
          - name: tmp
            mountPath: /tmp
    volumes:
      - name: tmp
        emptyDir: {}
{{- end }}
{{- end }}

{{/*
Name of a RayJob: "<fullname>-<suffix>[-<runId>]", cut to KubeRay's 47-character limit.
Input: dict "root" $ "suffix" <string> "runId" <string>.
*/}}
{{- define "synth.jobName" -}}
{{- $name := printf "%s-%s" (include "synth.fullname" .root) .suffix }}
{{- with .runId }}
{{- $name = printf "%s-%s" $name (. | toString | lower) }}
{{- end }}
{{- $name | trunc 47 | trimSuffix "-" }}
{{- end }}
