"""The learning curve of a run: episode return against episodes and against wall time."""

from __future__ import annotations

from pathlib import Path

from controller.run.rundir import RunDir


def plot_learning_curve(run: RunDir, task: str, reference: float | None = None) -> Path:
    """The run's returns as ``run.learning_curve`` (a PNG), with the task's reference return
    (``Task.reference_return``) as a line where it has one; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = run.episode_lines()
    returns = [x["return"] for x in lines]
    minutes = [(x["wall_time"] - lines[0]["wall_time"] + lines[0]["seconds"]) / 60 for x in lines]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    panels = ((axes[0], list(range(1, len(lines) + 1)), "episode"), (axes[1], minutes, "minutes"))
    for ax, xs, label in panels:
        ax.plot(list(xs), returns, marker="o", label="tickmpc")
        if reference is not None:
            ax.axhline(reference, color="gray", linestyle="--", label="reference")
        ax.set_xlabel(label)
        ax.set_ylabel("episode return")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{task}: learning from scratch ({run.root.name})")
    fig.tight_layout()
    path = run.learning_curve
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
