"""Z-Image Lab's command-line tools for ComfyUI's HTTP API: run workflows (and sweeps).

Uses only ComfyUI's public HTTP and websocket API, so it works against any ComfyUI server.
Run ``python -m zlab --help`` from the pack's folder.
"""
