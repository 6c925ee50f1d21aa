"""``python -m engine`` is ``enginectl``."""

from engine.cli import main

main(prog_name="enginectl")
