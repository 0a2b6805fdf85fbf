"""Stable Diffusion WebUI's glue (Forge; AUTOMATIC1111 1.9 and later): ``samplers`` (the
learned files as Sampler and Schedule type entries, the infotext) and ``fitting`` (``distill``
inside WebUI's own txt2img processing, the distill request). ``scripts/learned_solvers_webui.py``
is the extension's entry point; WebUI's modules are passed in, so nothing here imports WebUI."""
