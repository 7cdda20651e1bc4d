"""Which room a call is for, and what dispatchers see of the caller."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .sipmsg import SipUri

#: What a hidden caller is shown as (RFC 3323 §4.1.1.3 uses "Anonymous").
ANONYMOUS = "anonymous"
#: Digits of a masked number that stay visible.
MASK_VISIBLE = 4
#: A dial-out target written as a plain number (E.164 with an optional +, *, #).
NUMBER = re.compile(r"^\+?[0-9*#]{1,32}$")
#: A room name as the config accepts it.
ROOM_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Dialplan:
    """``dids``: dialled number -> room; otherwise the request URI's user is the room.

    ``accounts``: the names of the registered upstream accounts. A registrar retargets a
    call to the Contact the account registered (RFC 3261 §16.5), whose user is the
    account's name: the number dialled is then the To header's user.
    """

    dids: dict[str, str]
    accounts: frozenset[str] = frozenset()

    def room_for(self, request_uri: str, to: str = "") -> str | None:
        """The room a call to ``request_uri`` (``to``: its To header) joins (None: not a
        room address)."""
        try:
            user = SipUri.parse(request_uri).user
            if user in self.accounts and to:
                user = SipUri.parse(to).user
        except ValueError:
            return None
        if user in self.dids:
            return self.dids[user]
        if user.startswith("+") and user[1:] in self.dids:
            return self.dids[user[1:]]
        return user if ROOM_NAME.match(user) else None


def caller_id(from_header: str, mode: str) -> str:
    """The caller as dispatchers see it: ``show``, ``mask`` (last 4 digits) or ``hide``."""
    if mode == "hide":
        return ANONYMOUS
    display = ""
    text = from_header.strip()
    if text.startswith('"'):
        end = text.find('"', 1)
        display = text[1:end] if end > 0 else ""
    elif "<" in text:
        display = text[: text.index("<")].strip()
    try:
        user = SipUri.parse(text).user or SipUri.parse(text).host
    except ValueError:
        user = ""
    if mode == "mask":
        digits = user if len(user) > MASK_VISIBLE else ""
        masked = (
            "•" * (len(user) - MASK_VISIBLE) + user[-MASK_VISIBLE:] if digits else "•" * len(user)
        )
        return masked
    if display and user:
        return f"{display} <{user}>"
    return display or user or ANONYMOUS


def dial_target(target: str, registrar: str | None) -> str:
    """A dial-out target as a SIP URI: a URI as given, a number through the registrar's
    domain. ValueError with the reason otherwise."""
    target = target.strip()
    if target.lower().startswith(("sip:", "sips:")):
        SipUri.parse(target)
        return target
    if NUMBER.match(target):
        if not registrar:
            raise ValueError("a number needs an upstream SIP account to dial through")
        host = SipUri.parse(registrar).host
        return f"sip:{target}@{host}"
    raise ValueError(f"not a SIP URI or number: {target}")
