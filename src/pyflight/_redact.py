"""Secret-looking command-line arguments, hidden before argv goes into a trace.

A trace is a file people attach to bug reports; ``--password=hunter2`` must not ride
along. Only the value is replaced (``--password=<redacted>``), so the trace still shows
which options the program ran with. Heuristic by design: names that usually hold a
secret, the argument after such an option, ``NAME=value`` pairs whose name looks secret,
and credentials inside URLs (``scheme://user:secret@host``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REDACTED = "<redacted>"

#: Found anywhere in a name (``GITHUB_TOKEN``, ``dbpassword``, ``--aws-secret-access-key``).
_SECRET_PARTS = re.compile(
    r"passw(or)?d|secret|token|api[-_]?key|access[-_]?key|private[-_]?key|credential", re.IGNORECASE
)
#: Secret only as a whole word of the name (``--auth``, ``--http-auth``, not ``--author``).
_SECRET_WORDS = frozenset(
    {"pwd", "pass", "auth", "authorization", "cookie", "session", "sessionid", "signature"}
)
_OPTION = re.compile(r"^(--?[A-Za-z0-9][A-Za-z0-9_.-]*)(=(.*))?$", re.DOTALL)
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.DOTALL)
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):(?P<secret>[^/@\s]*)@"
)


def looks_secret(name: str) -> bool:
    """Whether an option or variable name usually holds a secret (``--db-password``)."""
    if _SECRET_PARTS.search(name):
        return True
    return any(word in _SECRET_WORDS for word in re.split(r"[-_.]+", name.lower()))


def _hide_url_credentials(arg: str) -> str:
    return _URL_CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", arg)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with secret values replaced by ``<redacted>`` (argv[0] kept as is)."""
    out: list[str] = []
    hide_next = False
    for index, arg in enumerate(argv):
        if index == 0:
            out.append(arg)
            continue
        if hide_next:
            hide_next = False
            if not arg.startswith("-"):
                out.append(REDACTED)
                continue
        option = _OPTION.match(arg)
        if option is not None and looks_secret(option[1]):
            if option[2] is None:
                hide_next = True  # --token VALUE
                out.append(arg)
            else:
                out.append(f"{option[1]}={REDACTED}")
            continue
        assignment = _ASSIGNMENT.match(arg)
        if assignment is not None and looks_secret(assignment[1]):
            out.append(f"{assignment[1]}={REDACTED}")
            continue
        out.append(_hide_url_credentials(arg))
    return out
