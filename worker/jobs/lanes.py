"""Priority lanes of the transactional queue: the job whose link dies sooner is taken first.

A 5-minute password reset enqueued behind 8,000 e-mail verifications (12-hour links) must not wait for
them: it waited 428 s and expired. The Redis broker keeps one list per priority step and a consumer takes
from the lowest step first (kombu: priority 0 is the most urgent on Redis), so each job goes into the lane
of its deadline: earliest deadline first, in four steps.
"""

from __future__ import annotations

# kombu's default priority steps on Redis; a message's lane is one of them.
URGENT, SOON, LATER = 0, 3, 6
URGENT_WITHIN_S = 15 * 60  # password resets, execute-actions links (Keycloak's default: 5 minutes)
SOON_WITHIN_S = 2 * 3600


def lane_for(expires_at: float | None, now: float) -> int:
    """The priority of a job whose link expires at `expires_at` (None: no link, such as a notice)."""
    if expires_at is None:
        return LATER
    left = expires_at - now
    if left <= URGENT_WITHIN_S:
        return URGENT
    if left <= SOON_WITHIN_S:
        return SOON
    return LATER
