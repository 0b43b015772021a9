"""``tickmpc run``, the closed loop, by part: the run directory's layout (``rundir.py``) and
its task copy (``task_copy.py``), the child processes (``supervise.py``), the episodes
(``episodes.py``), the lockstep wait between them (``lockstep.py``), the telemetry record
(``telemetry.py``), the learning curve (``plot.py``), and the loop that composes them
(``loop.py``: :func:`~controller.run.loop.run_closed_loop`).

Only :class:`RunDir` is imported here: a reader of a run directory (the dashboard) need not
load the simulation.
"""

from controller.run.rundir import RunDir

__all__ = ["RunDir"]
