"""netstack: a user-space TCP/IP stack that answers on a Linux TAP device."""

__version__ = "0.1.0"
