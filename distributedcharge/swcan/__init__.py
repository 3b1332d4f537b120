"""The wall-car conversation on the charge port's single-wire CAN (protocol v1 and v2).

``messages`` and ``packing`` encode and decode bytes, ``link`` holds the two sans-IO
state machines, ``adapter`` runs one of them on a python-can bus with can-isotp, and
``wire`` models frame bits and wire time. Layouts are in docs/protocol.md.
"""
