"""``python -m controller.cli``: how ``tickmpc run`` starts its children, which end when it is
gone (sim_bridge.lifeline)."""

from sim_bridge.lifeline import watch_parent

watch_parent()

from controller.cli import main  # noqa: E402

main()
