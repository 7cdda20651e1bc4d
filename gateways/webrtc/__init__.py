"""The WebRTC gateway: browsers in rooms, on aiortc, in a gateway process of its own.

One ``RTCPeerConnection`` per browser session, DTLS-SRTP only (aiortc offers nothing
else). Signalling is offer/answer through the control process (socket.io ``/rooms``
``webrtc_offer``, ``webrtc_candidate``, ``webrtc_hangup``), relayed over the gateway link.

**Half-trickle.** aiortc gathers every candidate before ``setLocalDescription`` returns,
so the bridge's answer carries all of its candidates (RFC 8838 §4.1, "half trickle"); the
browser trickles its own to the bridge (``webrtc_candidate``), and ends with an empty
candidate. aiortc has no ICE restart: after a network change the console opens a new
peer connection under the same session id, which replaces the old leg.

Audio: Opus at 48 kHz with the browser; towards the media worker the gateway is a plain
loopback RTP leg, L16 at 16 kHz (:mod:`.audio`). Video: the encoded-frame path around
aiortc's receiver (:mod:`.video`) forwards frames without decoding where codecs match.
"""
