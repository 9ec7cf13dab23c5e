"""Test Connection: the delivery path walked stage by stage, with deadlines and hints.

stages.py   the probe (probe_smtp): worker/smtp's own steps, timed, under an overall deadline
hints.py    advice for a failure: a pure table
status.py   what the probe reports (ProbeStatus, Stage)
"""

from worker.probe.hints import HINTS, hint_for
from worker.probe.stages import probe_smtp
from worker.probe.status import ProbeStatus, Stage, default_deadline, mode_of

__all__ = ["HINTS", "ProbeStatus", "Stage", "default_deadline", "hint_for", "mode_of", "probe_smtp"]
