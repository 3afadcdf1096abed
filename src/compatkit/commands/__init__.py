"""Sub-commands of the ``compatkit`` command line (see ``compatkit.cli``)."""
