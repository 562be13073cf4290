"""``python -m backoffice`` = ``lanecount-backoffice``."""

from backoffice.cli import main

main()
