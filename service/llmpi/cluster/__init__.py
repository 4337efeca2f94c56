"""Several boards: the RPC wire protocol (wire), the spiped channels (channels), waiting for the workers (waiting)
and the worker's own process (worker). Imports core, host and plan."""
