"""What this machine is: its CPUs and memory (hardware), its board's health (board), the llama.cpp build in the
image (llama_build). Imports core only."""
