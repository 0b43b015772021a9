"""The policy learner (Dyna / MBPO): SAC on short branched rollouts of the learned ensemble.

``sac`` holds the agent (tanh-squashed Gaussian actor scaled to the action bounds, twin critics
with target networks, automatic entropy temperature); ``rollouts`` the branched rollouts from
real states through the ensemble and the model buffer that keeps them. Like the rest of
``models``, nothing here imports the controller: the reward and the termination come in as
functions from the entry point.
"""
