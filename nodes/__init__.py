"""ComfyUI node layer of the PDFNet pack.

Node classes live in loaders.py, depth.py, segment.py, refine.py and composite.py and import
ComfyUI's ``comfy_api``; ``extension.py`` gathers them.  ``adapters.py`` and ``comfy_models.py``
import no ComfyUI module at import time, so the CI tests can exercise them without ComfyUI.
Nothing is imported here on purpose.
"""
