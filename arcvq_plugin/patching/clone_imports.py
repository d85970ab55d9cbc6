"""Make a patched clone's ``main.py`` import the clone's own ``taming`` / ``ldm`` package.

Upstream's ``taming/`` and ``ldm/`` have no ``__init__.py``: they are namespace packages. Python
prefers a regular package of the same name anywhere on ``sys.path`` to a namespace package, even
to one in the script's own folder, so in an environment that also holds PyPI's copies
(taming-transformers-rom1504, ldm-fix: arcvq's set-up script installs both, this package imports
them), ``python main.py`` inside a clone would run the PyPI code instead of the clone's patched
code. The patched ``main.py`` calls :func:`import_from_clone` before it first imports the package.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from types import ModuleType

__all__ = ["import_from_clone"]


def _folder_of(module: ModuleType) -> list[str]:
    return [os.path.realpath(p) for p in getattr(module, "__path__", [])]


def import_from_clone(package: str, main_file: str) -> ModuleType:
    """Import ``package`` from the folder next to ``main_file`` (the clone's root) and return it.

    A namespace package (upstream's layout) and a regular one (a fork that added ``__init__.py``)
    both work. Calling it again is a no-op; if ``package`` was already imported from elsewhere, an
    ImportError says so (the name cannot be rebound once other modules hold it).
    """
    root = os.path.dirname(os.path.abspath(main_file))
    folder = os.path.realpath(os.path.join(root, package))
    loaded = sys.modules.get(package)
    if loaded is not None:
        if folder in _folder_of(loaded):
            return loaded
        raise ImportError(f"{package!r} was imported from {_folder_of(loaded) or loaded!r} before "
                          f"{main_file} could import this clone's {folder}; run main.py directly")
    spec = importlib.machinery.PathFinder.find_spec(package, [root])
    if spec is None:
        raise ImportError(f"no {package}/ folder next to {main_file}: not a clone of its upstream?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    if spec.loader is not None:
        spec.loader.exec_module(module)
    return module
