"""ComfyUI's glue: ``nodes`` (the V3 nodes, imported only inside ComfyUI), ``fitting`` (``distill``
and SFD on a ComfyUI MODEL with its CFG guider) and ``schedulers`` (the solver folder, KSampler
scheduler entries, ComfyUI's own schedules and the model's facts)."""
