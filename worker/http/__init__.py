"""The HTTP API and the web console (`mailworker serve`).

app.py        the FastAPI app: routers, /healthz, middleware, error mapping
guards.py     body size limits, security headers, the client's address behind trusted proxies
errors.py     the service's errors as HTTP answers (422 with field and rule, 404, 409, 503, ...)
tokens.py     API tokens: random, stored as a hash, scope and realms
sessions.py   web console sessions (cookie -> Redis), CSRF tokens
auth.py       who calls: bearer token or session, scope, realm access, failed sign-ins limited
context.py    what handlers share (settings, runtime, token and session stores)
producer.py   /v1/realms/{realm}/emails|events|bulk, /v1/jobs, /v1/bulk
keycloak.py   /v1/realms/{realm}/keycloak-events: Keycloak's own event JSON
admin.py      /v1/realms/{realm}/smtp..., /v1/realms, /v1/dead-letters, /v1/stats
console/      /console: the Email tab and the rest, server-rendered, no CDN
"""
