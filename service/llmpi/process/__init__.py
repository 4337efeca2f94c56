"""The container's processes: supervisord's start, the launcher that becomes llama-server, the health check, the
FATAL listener, the pull's status page and llama-server's process. Imports every layer below."""
