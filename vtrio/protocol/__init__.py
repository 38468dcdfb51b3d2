"""VMess as a sans-IO state machine: no sockets, no clock, no randomness inside.

The runtime uses :mod:`vtrio.protocol.connection` (ServerConnection,
ClientConnection), the events in :mod:`vtrio.protocol.events`, and one
:class:`vtrio.protocol.validator.UserValidator` per inbound. The other modules
are the layers underneath: ids and KDF, auth ID, instruction and address,
headers, and the chunk codec of the body.
"""

from __future__ import annotations
