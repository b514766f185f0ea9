#!/usr/bin/env bash
# A cold start end to end on a local kind cluster: KEDA + the HTTP add-on + llm-pod with the bundled
# model, scaled from zero by the first request. Needs docker, kind, kubectl and helm on PATH.
# It cannot run where there is no container engine (the project's CI machines); GitHub Actions runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=${KIND_CLUSTER:-llm-pod-e2e}
tag=e2e

kind create cluster --name "$cluster" --wait 120s
trap 'kind delete cluster --name "$cluster"' EXIT

for image in nginx:nginx/Dockerfile sidecar:sidecar/Dockerfile llamacpp:inference/Dockerfile.llamacpp; do
  name=${image%%:*} file=${image#*:}
  docker build -q -f "$file" -t "ghcr.io/llm-pod/$name:$tag" .
  kind load docker-image --name "$cluster" "ghcr.io/llm-pod/$name:$tag"
done

helm repo add kedacore https://kedacore.github.io/charts >/dev/null
helm repo update >/dev/null
helm install keda kedacore/keda -n keda --create-namespace --version 2.20.2 --wait
helm install http-add-on kedacore/keda-add-ons-http -n keda --version 0.15.0 -f keda/http-add-on-values.yaml --wait

key=$(python3 -c 'import secrets; print("sk-lp-" + secrets.token_urlsafe(32))')
helm install gemma charts/llm-pod --wait=false \
  --set nginx.image.tag="$tag" --set sidecar.image.tag="$tag" \
  --set engine.llamacpp.image.tag="$tag" \
  --set auth.staticKeys.existingSecret="" --set "auth.staticKeys.generate[0].id=e2e" \
  --set "auth.staticKeys.generate[0].key=$key" \
  --set autoscaling.keda.enabled=true --set networkPolicy.enabled=false

# Scaled to zero before the first request: no pod runs.
until [ "$(kubectl get deployment gemma-llm-pod -o jsonpath='{.spec.replicas}')" = 0 ]; do sleep 2; done
kubectl -n keda port-forward svc/keda-add-ons-http-interceptor-proxy 18080:8080 >/dev/null &
trap 'kill %1 2>/dev/null; kind delete cluster --name "$cluster"' EXIT
until curl -s -o /dev/null http://127.0.0.1:18080/; do sleep 1; done
LLM_POD_API_KEY="$key" python3 -m loadtest.coldstart --url http://127.0.0.1:18080/gemma-3-270m --deadline 900
