"""Delivering one job: settings -> render -> message -> SMTP, and what the realm allows meanwhile.

deliver.py         one attempt (Services, deliver, dead_letter)
settings_cache.py  a worker's cache of realm settings, and the store's epoch
breaker.py         the per-realm circuit breaker
ratelimit.py       the per-realm rate limit shared by every worker (GCRA in Redis)
oauth.py           XOAUTH2 access tokens, cached per realm
oauth_http.py      the token endpoint's HTTP call, checked against private addresses
"""
