"""Each host's glue in one place: ``comfyui`` (the nodes, the fit on a ComfyUI MODEL, the
scheduler entries and the solver folder) and ``webui`` (the fit inside WebUI's processing, the
sampler and schedule entries). The core folders (``learned_samplers``, ``schedules``,
``distill``) know no host; the hosts' entry points (``nodes.py``, ``scripts/``) only call in here.
"""
