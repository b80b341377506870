"""ComfyUI node layer of the PDFNet pack: thin V3 node classes over pdfnet_core's public API.

* ``extension.py`` registers the model folders and the residency hook and lists the nodes;
  ``io_types.py`` defines the sockets (each carries a ``pdfnet_core.LoadedModel``).
* ``host.py`` is the bridge to ComfyUI (folders, devices, dtypes, residency, progress, outputs);
  ``model_files.py`` the loaders' names, choices, messages and loading; ``adapters.py`` the calls into
  pdfnet_core, the per-image chunk loops and the widget-to-config mappings.  These three import no ComfyUI module at import time, so
  the CI tests exercise them without ComfyUI.
* One file per node group: loaders, depth, segment, refine, segrefiner, composite, compare.
Nothing is imported here on purpose.
"""
