"""A task file: gymnasium's InvertedDoublePendulum-v5, a system tickmpc does not define.

Run it with any command that takes a task::

    tickmpc run --task examples/tasks/inverted_double_pendulum.py
    tickmpc serve --task examples/tasks/inverted_double_pendulum.py:TASK --models m --store s

A task file is plain Python that defines a ``Task`` (here ``TASK``, the name looked up when the
reference names none). The reward terms are torch functions of batched tensors, written from
gymnasium's definition of the environment (v5, rewards on the state after the step):

- ``survive``: 1 while the tip of the second pole is above y = 1 (weight 10, gymnasium's
  ``healthy_reward``), else 0, as is the termination;
- ``distance``: -(0.01 x_tip^2 + (y_tip - 2)^2);
- ``velocity``: -(1e-3 w1^2 + 5e-3 w2^2) of the two hinges' angular velocities.

Observation (9): cart x, sin(a), sin(b), cos(a), cos(b), cart velocity, w1, w2, constraint
force, where a is the first pole's angle from upright and b the second's relative to the first.
Each pole is 0.6 long, so the tip is at x + 0.6 sin a + 0.6 sin(a + b), height
0.6 cos a + 0.6 cos(a + b). The observation clips the velocities at +-10 and gymnasium's own
velocity penalty does not, so the two differ beyond that speed (the pendulum has fallen long
before).
"""

from __future__ import annotations

import torch

from controller.tasks import Task

POLE = 0.6


def tip(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal position and height of the second pole's tip: [..., 9] -> [...] twice."""
    x, sin_a, sin_b, cos_a, cos_b = (obs[..., i] for i in range(5))
    sin_ab = sin_a * cos_b + cos_a * sin_b
    cos_ab = cos_a * cos_b - sin_a * sin_b
    return x + POLE * (sin_a + sin_ab), POLE * (cos_a + cos_ab)


def terms(obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor) -> dict[str, torch.Tensor]:
    tip_x, tip_y = tip(next_obs)
    w1, w2 = next_obs[..., 6], next_obs[..., 7]
    return {
        "survive": (tip_y > 1.0).to(next_obs.dtype),
        "distance": -(0.01 * tip_x**2 + (tip_y - 2.0) ** 2),
        "velocity": -(1e-3 * w1**2 + 5e-3 * w2**2),
    }


def terminated(next_obs: torch.Tensor) -> torch.Tensor:
    return tip(next_obs)[1] <= 1.0


TASK = Task(
    name="inverted-double-pendulum",
    env_id="InvertedDoublePendulum-v5",
    obs_dim=9,
    act_dim=1,
    action_low=(-1.0,),
    action_high=(1.0,),
    control_period=0.05,
    episode_steps=1000,
    terms=terms,
    weights={"survive": 10.0, "distance": 1.0, "velocity": 1.0},
    terminated=terminated,
)
