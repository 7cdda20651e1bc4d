"""The camera gateway: IP cameras (RTSP through PyAV) as video and audio sources of rooms.

It runs in a gateway process of its own (DESIGN.md, "Processes"), started by the control
process as ``bridge.gateways.camera.process``. H.264 is forwarded on the video bus
(:mod:`bridge.videobus`) without decoding; camera audio joins its rooms as a monitor-only
leg over loopback RTP.
"""
