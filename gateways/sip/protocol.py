"""Constants shared by the SIP gateway process and its pjsua2 workers (no pjsua2 here)."""

from __future__ import annotations

#: The environment variable naming a SIP worker's end of its socket pair.
WORKER_FD_ENV = "UCBRIDGE_SIP_WORKER_FD"
#: Largest command or event on the worker channel (``SOCK_SEQPACKET``, JSON).
MAX_MESSAGE = 1 << 16
#: Header the front adds to an INVITE with the address it really came from (any copy
#: that arrives from outside is removed first).
SOURCE_HEADER = "X-Ucbridge-Source"
