"""How candidates are rolled out through the ensemble: the rollout part of the planner's
settings and its limits. Pure data (no ONNX Runtime), so the settings, the CLI and the dashboard
read it without loading the evaluator."""

from __future__ import annotations

from dataclasses import dataclass

from controller.checks import check_bool, check_choice, check_int, check_number

PROPAGATIONS = ("ts1", "tsinf", "expectation")
MAX_PARTICLES = 1000
MAX_PENALTY = 1e6
MAX_PESSIMISM = 100.0
MAX_POLICY_NOISE = 2.0
MAX_VALUE_WEIGHT = 100.0


@dataclass(frozen=True)
class RolloutSettings:
    """How candidates are rolled out through the ensemble (PETS trajectory sampling)."""

    particles: int = 1
    """P: rollouts per candidate, whose returns are aggregated (1..MAX_PARTICLES)."""
    propagation: str = "ts1"
    """"ts1": each particle re-draws its member every step; "tsinf": each particle keeps one
    member for the whole horizon; "expectation": the members' Gaussians are averaged."""
    sample: bool = True
    """Draw each next state from the predicted Gaussian (False: follow its mean)."""
    discount: float = 1.0
    """Per-step discount of the reward, in (0, 1]."""
    disagreement_penalty: float = 0.0
    """Subtracted per step times the ensemble disagreement (variance of the members' means in
    units of the state-delta scale); > 0 evaluates every member on every particle (E x cost)."""
    risk: float = 0.0
    """Candidate score = mean - risk x std of its particles' returns (0: the mean; needs P > 1
    to matter)."""
    reward_pessimism: float = 0.0
    """k, used only with a learned reward: each step's reward is the members' mean reward less
    k times their std (0..MAX_PESSIMISM); > 0 evaluates every member on every particle like the
    disagreement penalty (E x cost), since the spread needs all members."""
    policy_share: float = 0.0
    """Share of each iteration's candidates that are policy proposals, in [0, 1]: closed-loop
    rollouts of the learned policy (unused while no policy is loaded)."""
    policy_noise: float = 0.1
    """Std of the Gaussian noise on a proposal's actions, as a fraction of each action
    dimension's half range, in [0, MAX_POLICY_NOISE] (0: the policy's mean action)."""
    value_weight: float = 0.0
    """Weight of the terminal value, the policy's critic at the last predicted state times
    discount^H, added to each particle's return, in [0, MAX_VALUE_WEIGHT] (0: none)."""
    policy_start: bool = True
    """A plan with no previous plan (a new episode) starts from the policy's open-loop
    rollout while the policy is in use (share or value > 0). Turn it off for a policy that is
    not trusted: the rollout of a wrong one, as the first plan's sampling mean, can trap the
    optimizer at its corner of the bounds for the episode (measured on the cartpole swing-up
    with SAC policies that saturate the force: 0.8-1.0 against 173-174 without it)."""

    def __post_init__(self) -> None:
        check_int("particles", self.particles, 1, MAX_PARTICLES)
        check_choice("propagation", self.propagation, PROPAGATIONS)
        for name in ("sample", "policy_start"):
            check_bool(name, getattr(self, name))
        check_number("discount", self.discount, 0.0, 1.0, low_open=True)
        check_number("disagreement_penalty", self.disagreement_penalty, 0.0, MAX_PENALTY)
        check_number("risk", self.risk, 0.0, 100.0)
        check_number("reward_pessimism", self.reward_pessimism, 0.0, MAX_PESSIMISM)
        check_number("policy_share", self.policy_share, 0.0, 1.0)
        check_number("policy_noise", self.policy_noise, 0.0, MAX_POLICY_NOISE)
        check_number("value_weight", self.value_weight, 0.0, MAX_VALUE_WEIGHT)
