"""Enqueue e-mail from Python with the producer API (validated before anything reaches Redis).

python examples/python/enqueue.py REALM TO LINK      # a producer needs no MAILWORKER_SECRET_KEY
"""

from __future__ import annotations

import sys

from tasks import api


def main(realm: str, to: str, link: str) -> None:
    # A password reset; the job expires with its link (link_expiration minutes), retries stop then.
    job_id = api.send_email(
        realm, "password-reset", to, locale="en",
        context={"user": {"username": to}, "link": link, "link_expiration": 5},
        idempotency_key=f"reset:{to}:{link}",  # enqueue twice (a retrying caller), deliver once
    )  # fmt: skip
    print("job", job_id, api.wait_for_result(job_id, timeout=60)["status"])

    # An IAM event (Keycloak's field names work too): the realm's notify_events decide whether it mails.
    event = {"type": "UPDATE_PASSWORD", "ipAddress": "198.51.100.4", "user": {"email": to, "username": to}}
    print("event job", api.publish_event(realm, event))


if __name__ == "__main__":
    main(*sys.argv[1:4])
