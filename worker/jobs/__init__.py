"""The jobs: what producers enqueue and what the service remembers of each.

model.py        EmailJob and the rules a producer's request must meet (validated at enqueue)
events.py       IAM events (Keycloak's shape) turned into notice jobs
lanes.py        priority lanes: the job whose link dies first is taken first
ledger.py       per-job bookkeeping in Redis (attempts, ambiguous, delivered, state), the cooldown
pending.py      the pending-job ledger and its sweep (jobs the broker lost are published again)
lost.py         messages a dead consumer popped and never recorded, found within seconds
deadletters.py  the dead-letter store
stats.py        per-realm counters by hour
"""
