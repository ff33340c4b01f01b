"""The benchmark's parts: wire framing, the load generator, the peer servers, and how to run each."""
