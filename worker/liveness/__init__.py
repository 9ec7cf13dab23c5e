"""Who is alive: heartbeats per worker process, claims held by a process, leases on broker messages.

heartbeat.py  Heartbeat, Claims, LiveWorkers (the registry of who serves which queue)
leases.py     the consumer bootstep that renews the leases of the messages a worker holds
"""
