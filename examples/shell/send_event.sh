#!/bin/sh
# Send one signed `user.updated` event to recur-sync with curl and openssl.
#
#   export RECUR_SYNC_URL=https://sync.example.com/webhooks/user-updated
#   export WEBHOOK_SECRET=whsec_...       # the same secret recur-sync has
#   ./send_event.sh user_123 "王大明"
#
# Optional: EVENT_ID (default: a new random id; send the same id again to retry the same event)
# and CHANGED_AT (when the change happened, ISO 8601 UTC; default: now).
#
# curl retries 408, 429, 500, 502, 503 and 504 with the same event id (exponential backoff,
# honouring Retry-After), within the 5 minutes the signature is valid for. It exits non-zero,
# printing recur-sync's answer, when the event was refused (4xx) or never stored.
set -eu

if [ $# -ne 2 ]; then
    echo "usage: $0 USER_ID NAME" >&2
    exit 2
fi
user_id=$1
# JSON string escaping for the two characters a name may hold that JSON needs escaped.
name=$(printf '%s' "$2" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')

event_id=${EVENT_ID:-evt_$(openssl rand -hex 16)}
changed_at=${CHANGED_AT:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}
body=$(printf '{"id":"%s","type":"user.updated","timestamp":"%s","data":{"user_id":"%s","name":"%s"}}' \
    "$event_id" "$changed_at" "$user_id" "$name")

# Standard Webhooks: base64 HMAC-SHA256, keyed with the secret's base64 part decoded,
# of "{webhook-id}.{webhook-timestamp}.{body}".
sent_at=$(date +%s)
key_hex=$(printf '%s' "${WEBHOOK_SECRET#whsec_}" | openssl base64 -d -A | od -An -v -tx1 | tr -d ' \n')
signature=$(printf '%s.%s.%s' "$event_id" "$sent_at" "$body" \
    | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$key_hex" -binary | openssl base64 -A)

# The answer of the last attempt only (curl truncates the file before each retry).
answer=$(mktemp)
trap 'rm -f "$answer"' EXIT
status=0
curl --silent --show-error --fail-with-body --output "$answer" \
    --retry 8 --retry-connrefused --retry-max-time 240 \
    -H 'content-type: application/json' \
    -H "webhook-id: $event_id" \
    -H "webhook-timestamp: $sent_at" \
    -H "webhook-signature: v1,$signature" \
    --data-binary "$body" \
    "$RECUR_SYNC_URL" || status=$?
cat "$answer"
echo
exit "$status"
