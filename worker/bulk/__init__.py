"""Bulk notices: recipients streamed into chunks in Redis, one chunk sent over one pipelined session.

recipients.py  the producer side: each recipient validated, chunked as they come
chunks.py      the worker side: one run of one chunk (ChunkRun, run_chunk)
progress.py    a bulk job in Redis: chunks, done bits, counters, state, cancel
"""
