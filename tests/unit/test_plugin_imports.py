"""Plugin authors' imports from before the layer folders keep working: the old
names are the moved modules' objects, including names outside ``__all__``."""

import importlib

import pytest

MOVED = {
    "mlxhost.family": "mlxhost.families.family",
    "mlxhost.hookspecs": "mlxhost.families.hookspecs",
    "mlxhost.templating": "mlxhost.families.templating",
    "mlxhost.toolcalls": "mlxhost.families.toolcalls",
}


@pytest.mark.parametrize("old, new", MOVED.items())
def test_every_public_name_of_the_moved_module_resolves_from_the_old_one(old, new):
    shim, moved = importlib.import_module(old), importlib.import_module(new)
    public = [name for name in vars(moved) if not name.startswith("_")]
    assert public
    for name in public:
        assert getattr(shim, name) is getattr(moved, name), name


def test_the_names_plugins_use():
    from mlxhost.families import hookspecs, toolcalls
    from mlxhost.family import Family, FamilyPlugin, ModelRegistration  # noqa: F401
    from mlxhost.hookspecs import hookimpl
    from mlxhost.templating import render_chat_template  # noqa: F401
    from mlxhost.toolcalls import calls_in_free_text  # not in toolcalls' __all__

    assert hookimpl is hookspecs.hookimpl
    assert calls_in_free_text is toolcalls.calls_in_free_text
    with pytest.raises(AttributeError):
        importlib.import_module("mlxhost.toolcalls").no_such_name  # noqa: B018
