"""The built-in model families, one import each: importing a family's package registers it.

Code that needs the whole list (the loaders' folders, ``segment()``'s choice of models, the
downloads) imports the registry's names from here, so the list is complete when it is read.
A new family is a package under ``models/`` plus one line below.
"""
from __future__ import annotations

# in the order the loaders and messages list them
from .models import pdfnet, depth_anything, birefnet, segrefiner  # noqa: F401  (each registers its family)
from .registry import (FAMILIES, REGISTRY, as_loaded, family, family_of, folder_keys, known_files, lookup,
                       register_family)

__all__ = ["FAMILIES", "REGISTRY", "as_loaded", "family", "family_of", "folder_keys", "known_files", "lookup",
           "register_family"]
