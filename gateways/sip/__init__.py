"""The SIP gateway: phones and PBXs in rooms, through pjsua2.

A gateway process of its own (:mod:`.process`) runs the SIP front (:mod:`.front`, a
stateless proxy on the listen address), the call logic (:mod:`.calls`) and a pool of
pjsua2 worker processes (:mod:`.pool`, :mod:`.worker`), each carrying a few calls and
bridging their audio to the media workers as loopback L16 RTP (:mod:`.media`).
"""
