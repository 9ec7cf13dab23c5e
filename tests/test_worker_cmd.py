"""`mailworker worker`: the supervisor of the per-queue consumers."""


def test_worker_supervisor_exit_code():
    import signal

    from worker.cli.worker_cmd import exit_code

    assert exit_code([0, 0], asked_to_stop=False) == 0
    assert exit_code([-signal.SIGTERM, 0], asked_to_stop=True) == 0  # a requested stop is a clean stop
    assert exit_code([-signal.SIGTERM, 0], asked_to_stop=False) == 128 + signal.SIGTERM
    assert exit_code([0, 2], asked_to_stop=True) == 2
