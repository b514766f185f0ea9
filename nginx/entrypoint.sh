#!/bin/sh
# The nginx image's entrypoint: render the ONE template from LLM_POD_* variables, then run nginx in
# the foreground with a writable prefix (an emptyDir; the root filesystem stays read-only).
set -eu
template=${LLM_POD_NGINX_TEMPLATE:-/etc/llm-pod/llm-pod.conf.template}
prefix=${LLM_POD_NGINX_PREFIX:-/var/lib/llm-pod/nginx}

# The per-model path prefix nginx strips defaults to /<served model>, as `python -m localpod.render` does.
if [ -z "${LLM_POD_PATH_PREFIX:-}" ] && [ -n "${LLM_POD_SERVED_MODEL:-}" ]; then
  export LLM_POD_PATH_PREFIX="/$LLM_POD_SERVED_MODEL"
fi
case "${LLM_POD_PATH_PREFIX:-}" in
  [!/]*|*/|*//*|*[!A-Za-z0-9._~:/-]*) echo "llm-pod nginx: LLM_POD_PATH_PREFIX must look like /name or /a/b" >&2; exit 2 ;;
esac

# Every placeholder must have a value: an empty port or size would make a config that looks fine
# and listens nowhere.
missing=""
[ -n "${LLM_POD_SERVED_MODEL:-}" ] || missing=" LLM_POD_SERVED_MODEL"   # the path prefix's default
for name in $(grep -o '\${LLM_POD_[A-Z0-9_]*}' "$template" | tr -d '${}' | sort -u); do
  eval "value=\${$name:-}"
  [ -n "$value" ] || missing="$missing $name"
done
if [ -n "$missing" ]; then
  echo "llm-pod nginx: not set:$missing" >&2
  exit 2
fi

mkdir -p "$prefix"
# Only LLM_POD_* names are substituted: nginx's own $variables stay as they are.
names=$(env | sed -n 's/^\(LLM_POD_[A-Z0-9_]*\)=.*/${\1}/p' | tr '\n' ' ')
envsubst "$names" < "$template" > "$prefix/llm-pod.conf"
exec nginx -p "$prefix" -c "$prefix/llm-pod.conf" -e stderr
