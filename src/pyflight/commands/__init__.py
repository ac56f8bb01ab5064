"""The verbs of the ``pyflight`` command line, one module each.

Every module here has ``HELP`` (its line in ``pyflight --help``), ``add_arguments(parser)``
and ``run(args) -> int``; ``pyflight.cli`` builds the parser from them and dispatches.
A verb reports a failure by raising :class:`~pyflight.commands.common.CommandError`
(message and exit status); the CLI prints it as ``pyflight VERB: error: MESSAGE``.

The modules import only the standard library at the top: ``pyflight run`` builds its
parser inside the process it records, which must not load the reader or the analysis.
"""

from __future__ import annotations

#: The verbs in the order ``pyflight --help`` lists them.
VERBS = ("run", "snapshot", "report", "view", "export", "demo", "info")
