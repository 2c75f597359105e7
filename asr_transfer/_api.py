"""Let ``asr_transfer.train(...)``, ``.evaluate(...)`` and ``.transcribe(...)`` stay callable after their modules load.

Each public function shares its name with the module that defines it. Importing the submodule rebinds the package
attribute from the lazily resolved function to the module object, so the module itself forwards calls.
"""
from __future__ import annotations

import sys
import types
from typing import Callable


def make_module_callable(module_name: str, function: Callable) -> None:
    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    _CallableModule.__doc__ = function.__doc__
    sys.modules[module_name].__class__ = _CallableModule
