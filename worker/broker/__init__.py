"""Celery's Redis broker and result backend, made cheaper where the service's own bookkeeping covers
what they spend Redis commands on (issue 16: at most 15 commands per transactional message).

results.py    a task's final result written with SET and PUBLISH (no read before, no MULTI/EXEC)
transport.py  a held transactional job recorded by the next heartbeat, not at once (none if done by then)
"""
