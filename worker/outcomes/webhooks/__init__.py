"""Delivery webhooks: outcomes pushed to the endpoints a realm's admin registered, signed as the Standard
Webhooks specification says. The endpoints and their sealed secrets (endpoints.py), the pure decisions
(decisions.py: who is subscribed, the payload, the retry schedule), the signature (signing.py) and the
fan-out from `Outcomes.record` (fanout.py). The HTTP attempt itself is in worker/delivery/webhooks.py."""
