"""TCP (RFC 9293 and friends): a pure engine — segments and `now` in; segments, timers, events out.

Modules, each with one job:
  seq.py         modulo-2^32 sequence (and timestamp) arithmetic, and unwrapping to plain ints
  state.py       the RFC 9293 states and the transition table
  buffers.py     send buffer (immutable chunks, zero-copy segment views) and receive buffer
                 (in-order queue plus bounded out-of-order store, SACK blocks)
  scoreboard.py  what is in flight: one record per sent segment, SACK marks, loss marks (RFC 6675)
  rack.py        RACK (RFC 8985): time-based loss detection, the reordering window
  rtt.py         RFC 6298 retransmission timer estimator (+ RFC 7323 appendix G per-ACK gains)
  isn.py         RFC 6528 ISNs, timestamp offsets, RFC 4987 SYN cookies (Linux layout)
  cc.py          congestion control (Reno, CUBIC) behind a small interface — a separate owner
  connection.py  one connection (the TCB): segment arrival, output, timers, app events
  engine.py      the demultiplexer: connections, listeners, SYN/accept queues, RSTs, ICMP

The application-facing API (asyncio-Protocol-shaped callbacks) lives in netstack/api/tcp.py.
Nothing is imported here, so that any one module can be imported on its own.
"""
