"""The Z-Image Lab techniques as plain torch / numpy functions. Never imports ComfyUI."""
