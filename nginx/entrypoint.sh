#!/bin/sh
# The nginx image's entrypoint: render the ONE template from LLM_POD_* variables, then run nginx in
# the foreground with a writable prefix (an emptyDir; the root filesystem stays read-only).
set -eu
template=${LLM_POD_NGINX_TEMPLATE:-/etc/llm-pod/llm-pod.conf.template}
prefix=${LLM_POD_NGINX_PREFIX:-/var/lib/llm-pod/nginx}

# Every placeholder must have a value: an empty port or size would make a config that looks fine
# and listens nowhere.
missing=""
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
