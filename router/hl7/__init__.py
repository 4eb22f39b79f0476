"""HL7 v2 over MLLP: framing, the listener and client, and parsing into plain value objects.

The only package that imports the ``hl7`` library (python-hl7). Services receive
:class:`~router.hl7.messages.InboundMessage` and friends, never library objects.
"""
