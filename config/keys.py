"""Every Redis key the service writes, in one screen. All start with the configured prefix."""

from __future__ import annotations

from dataclasses import dataclass

# Access tokens by what they are for: the SMTP server's XOAUTH2 login, the IAM's admin API (user look-ups).
_TOKEN_NAMES = {"smtp": "oauth-token", "iam": "iam-token"}


@dataclass(frozen=True)
class Keys:
    prefix: str = "mailworker"

    # config store (config/store.py)
    def saved(self, realm: str) -> str:
        """Hash: version, data (JSON, password encrypted), saved_at."""
        return f"{self.prefix}:realm:{realm}:saved"

    def draft(self, realm: str) -> str:
        """String: JSON {base_version, data, updated_at}."""
        return f"{self.prefix}:realm:{realm}:draft"

    def history(self, realm: str) -> str:
        """List, newest first: JSON {version, data, saved_at, note}."""
        return f"{self.prefix}:realm:{realm}:history"

    def realms(self) -> str:
        """Set of realm names that have saved settings."""
        return f"{self.prefix}:realms"

    # delivery (tasks/)
    def job(self, job_id: str) -> str:
        """Hash: one job's bookkeeping (attempts, ambiguous, last_error, delivered record, state); expires."""
        return f"{self.prefix}:job:{job_id}"

    def pending(self) -> str:
        """Sorted set of transactional jobs not ended yet, scored by when news of them is due."""
        return f"{self.prefix}:pending"

    def pending_job(self, job_id: str) -> str:
        """String: what it takes to publish a pending job again (task, args, queue; no secrets)."""
        return f"{self.prefix}:pending:{job_id}"

    def sweeper_lock(self) -> str:
        return f"{self.prefix}:sweeper-lock"

    def lost_check_lock(self) -> str:
        """String: the worker checking for messages popped and never recorded this round (worker/jobs/lost.py)."""
        return f"{self.prefix}:lost-check-lock"

    def lost_suspects(self) -> str:
        """Hash: pending entries seen lost (taken from their queue, held by nobody) -> when first seen."""
        return f"{self.prefix}:lost-suspects"

    def claim(self, job_id: str) -> str:
        """String: the worker process (and thread) working on the job now (worker/liveness/heartbeat.py)."""
        return f"{self.prefix}:claim:{job_id}"

    # liveness (worker/liveness/heartbeat.py)
    def alive(self, process: str) -> str:
        """String: present while the worker process beats (expires one lease after its last beat)."""
        return f"{self.prefix}:alive:{process}"

    def alive_prefix(self) -> str:
        return f"{self.prefix}:alive:"

    def workers(self) -> str:
        """Hash: consumer node -> JSON {queues, host, pid, beat}: who consumes which queue, and since when."""
        return f"{self.prefix}:workers"

    # the store's identity (config/epoch.py)
    def epoch(self) -> str:
        """Hash {id, created_at}: written with the first saved settings; gone means Redis lost its data."""
        return f"{self.prefix}:epoch"

    def wiped(self) -> str:
        """Hash: what a worker noticed when the store's epoch vanished or changed (for `health`)."""
        return f"{self.prefix}:wiped"

    def dead_letter(self, job_id: str) -> str:
        """Hash: the dead job, its reason and timestamps."""
        return f"{self.prefix}:dead:{job_id}"

    def dead_letters(self) -> str:
        """Sorted set of dead job ids, scored by the time they died."""
        return f"{self.prefix}:dead-letters"

    def cooldown(self, realm: str, template: str, recipient: str) -> str:
        return f"{self.prefix}:cooldown:{realm}:{template}:{recipient.lower()}"

    def stats(self, realm: str, hour: int) -> str:
        """Hash of counters (sent, dead, dropped, ...) for one realm and one clock hour (epoch hours)."""
        return f"{self.prefix}:stats:{realm}:{hour}"

    def stats_realms(self) -> str:
        """Set of realms that have counters."""
        return f"{self.prefix}:stats-realms"

    def outcome_totals(self) -> str:
        """Hash `<realm>\t<outcome>` -> count since the store began (worker/outcomes/record.py, /metrics)."""
        return f"{self.prefix}:outcome-totals"

    # delivery webhooks (worker/outcomes/webhooks/)
    def webhooks(self, realm: str) -> str:
        """Hash: endpoint id -> JSON {id, realm, url, events, secret (sealed), created_at, disabled}."""
        return f"{self.prefix}:webhooks:{realm}"

    def webhook_realms(self) -> str:
        """Hash: endpoint id -> its realm (find an endpoint by id alone)."""
        return f"{self.prefix}:webhook-realms"

    def webhook_in_flight(self, endpoint_id: str) -> str:
        """Counter: attempts to reach the endpoint running now (capped, so a hanging one holds few processes)."""
        return f"{self.prefix}:webhook-in-flight:{endpoint_id}"

    def webhook_pause(self, endpoint_id: str) -> str:
        """String: present while an endpoint that timed out is left alone (expires by itself)."""
        return f"{self.prefix}:webhook-pause:{endpoint_id}"

    def metric_totals(self) -> str:
        """Hash of all-time counters for /metrics: retries, SMTP errors by kind, delivery time buckets
        (worker/outcomes/tallies.py)."""
        return f"{self.prefix}:metric-totals"

    # bulk (tasks/bulk.py)
    def bulk_job(self, job_id: str) -> str:
        return f"{self.prefix}:bulk:{job_id}"

    def bulk_jobs(self) -> str:
        """Sorted set of bulk job ids by creation time (`mailworker job list`); trimmed to their TTL."""
        return f"{self.prefix}:bulk-jobs"

    def bulk_chunk(self, job_id: str, chunk: int) -> str:
        return f"{self.prefix}:bulk:{job_id}:chunk:{chunk}"

    def rate_window(self, realm: str, window: str) -> str:
        return f"{self.prefix}:rate:{realm}:{window}"

    def token(self, realm: str, kind: str = "smtp") -> str:
        """Cached OAuth2 access token of a realm (encrypted): for XOAUTH2 ("smtp") or the IAM's admin API."""
        return f"{self.prefix}:{_TOKEN_NAMES[kind]}:{realm}"

    def token_lock(self, realm: str, kind: str = "smtp") -> str:
        """String: the process fetching the realm's access token now (SET NX, expires by itself)."""
        return f"{self.prefix}:{_TOKEN_NAMES[kind]}-lock:{realm}"

    def ingest(self) -> str:
        """List of plain-JSON jobs from producers in other languages."""
        return f"{self.prefix}:ingest"

    def ingest_processing(self, consumer: str) -> str:
        """List of ingest entries one consumer took and has not finished (re-processed when it restarts)."""
        return f"{self.prefix}:ingest:processing:{consumer}"

    def ingest_in_hand(self, consumer: str) -> str:
        """Hash: the entry one consumer handles now (digest, tries, token); one per consumer, not per entry."""
        return f"{self.prefix}:ingest:in-hand:{consumer}"

    # bulk jobs (worker/bulk/progress.py); bulk_job and bulk_chunk above are part of the same family
    def bulk_done(self, job_id: str) -> str:
        """Bitmap, one bit per recipient index: set once the recipient is settled (sent, failed or cancelled)."""
        return f"{self.prefix}:bulk:{job_id}:done"

    def bulk_chunks_done(self, job_id: str) -> str:
        """Bitmap, one bit per chunk: set when the chunk has nothing left to do (counted once)."""
        return f"{self.prefix}:bulk:{job_id}:chunks-done"

    def bulk_chunk_claim(self, job_id: str, chunk: int) -> str:
        """String with the worker running the chunk now; expires by itself (a killed worker's claim)."""
        return f"{self.prefix}:bulk:{job_id}:chunk:{chunk}:claim"

    # the HTTP API (worker/http/)
    def api_token(self, digest: str) -> str:
        """Hash: one API token, found by the SHA-256 of the token (the token itself is never stored)."""
        return f"{self.prefix}:api:token:{digest}"

    def api_tokens(self) -> str:
        """Hash: token id -> the SHA-256 its record is found by (`mailworker token list|revoke`)."""
        return f"{self.prefix}:api:tokens"

    def console_session(self, session_id: str) -> str:
        """Hash: a web console session (token id, CSRF token); expires after MAILWORKER_HTTP_SESSION_TTL."""
        return f"{self.prefix}:api:session:{session_id}"

    def auth_failures(self, client: str) -> str:
        """String: failed authentications of one client address in the current minute."""
        return f"{self.prefix}:api:auth-failures:{client}"

    # per-realm circuit breaker (worker/delivery/breaker.py)
    def breaker(self, realm: str) -> str:
        """Hash: the realm's connection failures, cool-off and probe; expires by itself."""
        return f"{self.prefix}:breaker:{realm}"

    # bounces, VERP and suppression (worker/bounces/)
    def verp(self, token: str) -> str:
        """String: JSON {realm, job_id, to} of the job a VERP token names; expires (docs/bounces.md)."""
        return f"{self.prefix}:verp:{token}"

    def bounce(self, job_id: str) -> str:
        """String: JSON of the job's latest bounce or complaint (tasks/status.py shows it); expires."""
        return f"{self.prefix}:bounce:{job_id}"

    def suppressed(self, realm: str) -> str:
        """Sorted set: the realm's suppressed addresses (lower case), scored by when each suppression ends."""
        return f"{self.prefix}:suppressed:{realm}"

    def suppression(self, realm: str) -> str:
        """Hash: suppressed address -> JSON {reason, job_id, since, until, status, diagnostic}."""
        return f"{self.prefix}:suppression:{realm}"

    def unmapped_bounces(self) -> str:
        """List, newest first: bounce messages no job could be found for, kept for inspection; expires."""
        return f"{self.prefix}:bounces-unmapped"


# The servers a realm may have (docs/delivery.md#smtp-failover): the primary's keys are the ones above.
PRIMARY = "primary"
SECONDARY = "secondary"
SERVERS = (PRIMARY, SECONDARY)


@dataclass(frozen=True)
class ServerKeys(Keys):
    """The settings keys of a realm's other SMTP server (the secondary): the same saved/draft/history
    layout beside the primary's, so the one SettingsStore keeps both (config/store.py `for_server`)."""

    server: str = SECONDARY

    def saved(self, realm: str) -> str:
        return f"{self.prefix}:realm:{realm}:{self.server}:saved"

    def draft(self, realm: str) -> str:
        return f"{self.prefix}:realm:{realm}:{self.server}:draft"

    def history(self, realm: str) -> str:
        return f"{self.prefix}:realm:{realm}:{self.server}:history"

    def realms(self) -> str:
        return f"{self.prefix}:realms:{self.server}"


def channel(realm: str, server: str) -> str:
    """What a realm's server is known by to its session pool, token cache and circuit breaker: the realm's
    name for the primary (as always), `realm:secondary` for the other (a realm name holds no colon)."""
    return realm if server == PRIMARY else f"{realm}:{server}"
