"""Sparkplug B 3.0 edge node: the payload codec (``payload.py``) and the session (``node.py``).

The protobuf definition ``sparkplug_b.proto`` (EPL-2.0, Cirrus Link Solutions and others) is vendored
from eclipse/tahu, the payload definition the Sparkplug 3.0 specification points to. ``sparkplug_b_pb2.py``
is generated from it by grpcio-tools 1.85.1 (libprotoc 35.1) and committed with the licence header and the
command in its first lines; it needs the ``protobuf`` runtime >= 7.35.1 (a base dependency: tflite-runtime
nodes do not get it through LiteRT).
"""
