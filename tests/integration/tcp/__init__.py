"""TCP against the Linux kernel: bulk transfers (clean and impaired), many connections,
half-close, resets, options, SYN floods, checksums, graceful SIGTERM — each world in a fresh
network namespace."""
