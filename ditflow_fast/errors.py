"""Errors raised across layers, in a module that imports nothing, so that any layer can raise them
without importing another layer's package (whose ``__init__`` would run first)."""


class ModelError(ValueError):
    """A model that cannot be loaded, or cannot take the asked size."""


def broken_import(exc: BaseException | None) -> ImportError | None:
    """The ImportError behind ``exc`` (through causes and contexts), if any: diffusers' lazy modules turn a
    failed import of a dependency into a RuntimeError whose cause is the ImportError that names the module."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, ImportError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def cannot_load(model: str, exc: BaseException, what: str = "") -> ModelError:
    """The error for a model that failed to load: a broken import is named as such, since blaming the
    model's files (a missing config) sends the user to the wrong place."""
    imp = broken_import(exc)
    if imp is None:
        return ModelError(f"--model {model}: cannot be loaded{what} ({type(exc).__name__}: {exc})")
    module = imp.name or "a module"
    where = ""
    try:
        import importlib.util

        spec = importlib.util.find_spec(imp.name) if imp.name else None
        origin = spec and (spec.origin or ", ".join(spec.submodule_search_locations or []))
        where = f", found at {origin}" if origin and origin not in str(imp) else ""
    except (ImportError, ValueError):
        pass
    return ModelError(f"--model {model}: not loaded because importing {module!r} failed ({imp}{where}); the Python "
                      "environment is broken, not the model: a local folder of that name may shadow the installed "
                      "package, or the install is incomplete (rerun the setup)")
