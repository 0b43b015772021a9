"""``python -m controller.cli``: how ``tickmpc run`` starts its children."""

from controller.cli import main

main()
