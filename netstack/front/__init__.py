"""The front: ordinary kernel programs in, out and through the stack.

- forward.py: inbound port forwarding (the stack's port -> a kernel socket address)
- socks.py: a SOCKS5 server on a kernel address whose connections leave from the stack
- pipe.py: the relay between one stack TCP connection and one kernel socket (flow control,
  half-close, resets) that both use
- port.py: what the front needs from a running stack (loop, engines through netstack.api)
- stats.py: the front's counters, read by metrics.FrontCollector

The front is an application of the stack like the built-in services: it uses netstack.api
and the loop's add_reader/add_writer, never an engine's insides.
"""
