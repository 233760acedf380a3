"""Conformance suite against the Linux kernel USB/IP servers (tools/kernelpeer)."""
