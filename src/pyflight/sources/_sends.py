"""Whether this thread sent on a socket since the flag was last cleared, for the
pure-Python core: the socket wrappers of ``sources/blocking.py`` set it, the Python
``Handle._run`` of ``sources/asyncio_loop.py`` clears it before a task's step and reads it
after (TASK_SENT: the analysis tells a task waiting for an answer from one waiting for a
push). The C core keeps the same flag in C (``pyfl_tls_sent``, ``_core.h``)."""

from __future__ import annotations

import _thread

#: ``.on``: this thread sent since it was last cleared.
flag = _thread._local()
