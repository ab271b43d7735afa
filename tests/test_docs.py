"""Every public name of the library has a docstring (the API reference is generated from them; the docs build
itself, ``mkdocs build --strict``, runs in ``.ci/run`` and fails on a broken cross-reference)."""

import importlib
import inspect

import pytest

PUBLIC_MODULES = ["operators", "masks", "metrics", "data", "models", "adjoint", "bilevel", "linear_solve",
                  "pretrained"]


def _documented(obj) -> bool:
    doc = vars(obj).get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    # dataclasses (and equinox Modules) write "Name(field, ...)" where the class has no docstring
    return bool(doc and doc.strip()) and not (isinstance(obj, type) and doc.startswith(f"{obj.__name__}("))


def _inherits_doc(cls, attr) -> bool:
    for base in cls.__mro__[1:]:
        value = vars(base).get(attr)
        fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
        if fn is not None and getattr(fn, "__doc__", None):
            return True
    return False


def _undocumented(module_name: str) -> list[str]:
    module = importlib.import_module(f"metajax.{module_name}")
    missing = [] if _documented(module) else [module_name]
    for name in module.__all__:
        obj = getattr(module, name)
        if not callable(obj):
            continue  # constants are documented by their module (and by the comment beside them)
        if not _documented(obj):
            missing.append(f"{module_name}.{name}")
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
                if attr.startswith("_") or not inspect.isfunction(fn) or fn.__doc__:
                    continue
                if not _inherits_doc(obj, attr):  # an override documented by the method it overrides
                    missing.append(f"{module_name}.{name}.{attr}")
    return missing


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_every_public_name_has_a_docstring(module_name):
    module = importlib.import_module(f"metajax.{module_name}")
    assert module.__all__, f"metajax.{module_name} declares no public names"
    assert _undocumented(module_name) == []


def test_the_check_finds_a_missing_docstring():
    class Documented:
        """A class."""

        def method(self):
            """A method."""

    class Bare(Documented):
        def method(self):  # inherits the documentation of what it overrides
            pass

        def other(self):
            pass

    assert _documented(Documented) and not _documented(Bare)
    assert _inherits_doc(Bare, "method") and not _inherits_doc(Bare, "other")
