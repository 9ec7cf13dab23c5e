"""What became of each job, flowing back: one record per outcome (outcome.py), counted for `mailworker stats`
and the metrics (record.py); webhooks, bounces and suppression build on it."""
