"""Child processes that end with their parent.

``tickmpc run`` starts the service, the learner and the dashboard as child processes, and the
videos start a render process per video. A parent that is killed outright (SIGKILL, an OOM
kill) cannot stop them, and a child left running holds the run's sockets and store, so that
``--resume`` cannot start. So a parent starts its children with :func:`child_env`, which names
it, and each child calls :func:`watch_parent` first thing: a daemon thread checks every
``POLL_S`` that the process's parent is still the one named, and when it is not (the child
was re-parented to init or a subreaper), stops the process as SIGTERM does (its own orderly
stop: the store flushed, no half-made model published), then kills it if it is still there
``GRACE_S`` later.

Why a watch thread rather than Linux's ``prctl(PR_SET_PDEATHSIG)``: it works wherever Python
does (macOS included); it needs no ``preexec_fn``, which Python documents as unsafe in a
process with threads (``tickmpc run`` has several when it starts a render); the death signal
fires when the parent *thread* that started the child ends, not the process (the videos
start their renders from a worker thread); and it escalates to a kill when an orderly stop
hangs. What it costs: the parent's death is seen within ``POLL_S``, and only a child that
runs this module's code is covered (all four are ours).

The variable is removed from the child's environment as it is read: a child's own children
have another parent.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Mapping

PARENT_ENV = "TICKMPC_PARENT_PID"
"""The environment variable that names the parent a child must not outlive."""
POLL_S = 0.5
"""How often the child checks its parent, seconds."""
GRACE_S = 5.0
"""How long an orderly stop may take once the parent is gone, seconds, before the kill."""


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment) naming this process as the parent that a
    child started with it must not outlive."""
    return {**(os.environ if env is None else env), PARENT_ENV: str(os.getpid())}


def watch_parent(poll_s: float = POLL_S, grace_s: float = GRACE_S) -> None:
    """End this process when the parent that :data:`PARENT_ENV` names is gone (nothing when it
    names none). SystemExit at once when that parent is already gone; otherwise a daemon
    thread watches it."""
    named = os.environ.pop(PARENT_ENV, None)
    if named is None:
        return
    try:
        parent = int(named)
    except ValueError:
        raise SystemExit(f"{PARENT_ENV}={named!r}: not a process id") from None
    if os.getppid() != parent:  # it died before this process could watch it
        raise SystemExit(f"parent process {parent} is gone: not starting")
    thread = threading.Thread(target=_watch, args=(parent, poll_s, grace_s), daemon=True,
                              name="lifeline")  # fmt: skip
    thread.start()


def _watch(parent: int, poll_s: float, grace_s: float) -> None:
    stop = threading.Event()  # never set: a timer that ends with the process
    while os.getppid() == parent:
        stop.wait(poll_s)
    print(f"parent process {parent} is gone: stopping", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
    stop.wait(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)
