#!/bin/sh
# Enqueue a password-reset e-mail from a shell: one RPUSH of a JSON object onto the ingest list.
# Needs redis-cli and jq (jq builds the JSON, so quotes or accents in a value cannot break it).
#
#   ./enqueue-password-reset.sh REALM TO LINK [IDEMPOTENCY_KEY]
#
# REDIS_URL (default redis://127.0.0.1:6379/0) is MAILWORKER_STORE_URL's Redis; put a Redis password in
# REDISCLI_AUTH, not in the URL (a command line is visible to every user in `ps`).
# The job id is "idem-" + the first 32 hex digits of sha256("REALM\0IDEMPOTENCY_KEY"): `mailworker status`.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 REALM TO LINK [IDEMPOTENCY_KEY]" >&2; exit 1; }

entry=$(jq -cn --arg realm "$1" --arg to "$2" --arg link "$3" --arg key "${4:-}" '{
  type: "email", realm: $realm, template: "password-reset", to: $to, locale: "en",
  context: {user: {username: $to}, link: $link, link_expiration: 5}
} + (if $key == "" then {} else {idempotency_key: $key} end)')

redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379/0}" RPUSH "${MAILWORKER_KEY_PREFIX:-mailworker}:ingest" "$entry" >/dev/null
echo "queued: $entry"
