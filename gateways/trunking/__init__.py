"""The trunking gateway: MCPTT handsets, their media plane and their floor control.

LTE push-to-talk handsets speak 3GPP TS 24.380 floor control ("MCPT" RTCP APP packets, see
:mod:`bridge.gateways.trunking.mcpt`) beside plain RTP media.
"""
