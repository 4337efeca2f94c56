"""What the benchmark scripts (scripts/bench, soak, bench-cluster, ...) and the tests share: reading a server-sent
event stream, driving a compose project, waiting for a server, describing the machine."""
