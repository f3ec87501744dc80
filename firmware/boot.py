# Device boot (runs before main.py): choose the app slot (OTA trial / rollback handled by bootsel, which
# like this file is outside the slots and never updated over the air) and put it first on sys.path.
import os
import sys

try:
    import bootsel  # /bootsel.py on the device: the copy that is never replaced by OTA
except ImportError:
    from lifeline.firmware import bootsel

try:
    _slot = bootsel.select(bootsel.OsFs(os))
except Exception as e:  # a damaged pointer must not brick the node: run the factory app
    sys.print_exception(e)
    _slot = bootsel.FACTORY
if _slot:
    sys.path.insert(0, _slot + "/lib")
    # bootsel imported the factory `lifeline` package; forget it so main.py imports the slot's copy
    for _name in list(sys.modules):
        if _name == "lifeline" or _name.startswith("lifeline."):
            del sys.modules[_name]
