"""What to serve and how, without side effects: GGUF reading, the memory fit, quants, speculation, the layer split
across boards, and the serving plan (llama-server's command line and runtime files). Imports core and host."""
