"""Bounces and complaints flowing back (docs/bounces.md): VERP envelope senders (verp.py), the suppression
list and its policy (suppression.py), DSN and ARF parsing (dsn.py, arf.py), mapping to jobs and recording
(record.py), and the SMTP/LMTP receiver (receiver.py). Delivery and bulk ask it; it records Outcomes."""
