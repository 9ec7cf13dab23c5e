#!/bin/sh
# Send a password-reset e-mail through the HTTP API: one POST, the job id on stdout.
# Needs curl and jq (jq builds the JSON, so quotes or accents in a value cannot break it).
#
#   MAILWORKER_API_TOKEN=mwt_... ./send-email.sh REALM TO LINK [IDEMPOTENCY_KEY]
#
# MAILWORKER_API_URL (default http://127.0.0.1:8025) is where `mailworker serve` listens; the token is a
# producer token (`mailworker token create --scope producer --realm REALM`). The token goes to curl on a
# file descriptor, not on its command line (which every user sees in `ps`).
# Exit status: 0 with the job id printed; 1 with the server's error on stderr when the API refuses the
# request (4xx: the field and the rule) or fails (5xx); curl's own status when the server cannot be reached.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 REALM TO LINK [IDEMPOTENCY_KEY]" >&2; exit 2; }
: "${MAILWORKER_API_TOKEN:?set MAILWORKER_API_TOKEN to a producer token}"
url="${MAILWORKER_API_URL:-http://127.0.0.1:8025}"
realm=$(jq -rn --arg realm "$1" '$realm | @uri')

body=$(jq -cn --arg to "$2" --arg link "$3" '{
  template: "password-reset", to: $to, locale: "en",
  context: {user: {username: $to}, link: $link, link_expiration: 5}
}')

# The headers come from fd 3: the token, and the idempotency key when there is one.
reply=$(printf '%s' "$body" | curl --silent --show-error --request POST --data-binary @- \
  --header 'Content-Type: application/json' --header @/dev/fd/3 \
  --write-out '\n%{http_code}' "$url/v1/realms/$realm/emails" 3<<HEADERS
Authorization: Bearer $MAILWORKER_API_TOKEN
${4:+Idempotency-Key: $4}
HEADERS
)
status=$(printf '%s\n' "$reply" | tail -n 1)
answer=$(printf '%s\n' "$reply" | sed '$d')

case "$status" in
  2??) printf '%s\n' "$answer" | jq -r .job_id ;;
  *) echo "error: HTTP $status: $answer" >&2; exit 1 ;;
esac
