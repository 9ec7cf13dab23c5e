import pytest

from worker.jobs.lanes import LATER, SOON, URGENT, lane_for

NOW = 1_000_000.0


@pytest.mark.parametrize(
    "expires_in, lane",
    [
        (5 * 60, URGENT),  # a password reset
        (15 * 60, URGENT),
        (15 * 60 + 1, SOON),
        (2 * 3600, SOON),
        (12 * 3600, LATER),  # an e-mail verification
        (None, LATER),  # a security notice: no link
        (-10, URGENT),  # already late: first in line (the worker dead-letters it if it expired)
    ],
)
def test_the_sooner_the_link_dies_the_sooner_the_job_is_taken(expires_in, lane):
    assert lane_for(NOW + expires_in if expires_in is not None else None, NOW) == lane
