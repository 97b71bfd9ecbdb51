"""``python -m runstream.server`` is the ``runstream`` command."""

from .cli import main

main(prog_name="runstream")
