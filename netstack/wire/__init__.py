"""Zero-copy header views and builders, one module per header.

`parse(view)` functions read with precompiled `struct.Struct.unpack_from`, return a NamedTuple
header plus a memoryview of the payload (never a copy), and raise `Malformed(reason)` for input
that must be dropped. Builders return header bytes ready to sit in front of a payload in a
writev iovec list.
"""
