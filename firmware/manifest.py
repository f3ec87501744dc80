# What goes onto a node, as plain lists (paths relative to firmware/, installed under
# /lib/lifeline/firmware/ and compiled to .mpy by lifeline.tools.mpy_compile). boot.py, main.py and
# bootsel.py also go to the device root "/" (see ROOT_FILES): they select the app slot and are never
# replaced over the air. FILES is the union (what CI installs to exercise every kind and radio);
# files_for(kind, radio) is what one node carries.

ROOT_FILES = ("boot.py", "main.py", "bootsel.py")

COMMON = (
    "__init__.py",
    "awake.py",
    "bootsel.py",
    "config.py",
    "confcheck.py",
    "downlink.py",
    "fcnt.py",
    "node.py",
    "ota.py",
    "rekey.py",
    "reports.py",
    "rtcstate.py",
    "safemode.py",
    "storage.py",
    "txqueue.py",
    "hal/__init__.py",
    "sensors/__init__.py",
    "radios/__init__.py",
    "radios/ble.py",  # the maintenance GATT service is on every node
)

HAL_DEVICE = ("hal/esp32.py",)
HAL_SIM = ("hal/sim.py", "hal/sim_chips.py", "simnode.py")

KIND_FILES = {
    "smoke": ("sensors/smoke.py", "sensors/buzzer.py"),
    "tilt": ("sensors/tilt.py", "sensors/lis3dh.py"),
    "water_level": ("sensors/water_level.py", "sensors/a02yyuw.py"),
    "water_meter": ("sensors/meter.py", "sensors/pulse.py"),
    "gas_meter": ("sensors/meter.py", "sensors/pulse.py"),
    "electricity_meter": ("sensors/electricity.py", "sensors/modbus.py", "sensors/sdm120.py"),
}

RADIO_FILES = {
    "lora": ("radios/lora_at.py", "radios/airtime.py"),
    "nbiot": ("radios/nbiot.py", "radios/mqtt.py"),
    "ble": (),
}

# lifeline.protocols.DEVICE_MODULES
PROTOCOL_MODULES = ("schema", "cbor", "aes", "crypto", "frame", "sm3", "sm4", "crypto_sm", "suites", "rekey")


def files_for(kind, radio, device=True):
    out = list(COMMON) + list(HAL_DEVICE if device else HAL_SIM)
    for f in KIND_FILES[kind] + RADIO_FILES[radio]:
        if f not in out:
            out.append(f)
    return out


# The union, as a literal (lifeline.tools.mpy_runtime reads this list without executing the file).
FILES = (
    "__init__.py",
    "awake.py",
    "bootsel.py",
    "config.py",
    "confcheck.py",
    "downlink.py",
    "fcnt.py",
    "node.py",
    "ota.py",
    "rekey.py",
    "reports.py",
    "rtcstate.py",
    "safemode.py",
    "storage.py",
    "txqueue.py",
    "boot.py",
    "main.py",
    "simnode.py",
    "hal/__init__.py",
    "hal/esp32.py",
    "hal/sim.py",
    "hal/sim_chips.py",
    "sensors/__init__.py",
    "sensors/smoke.py",
    "sensors/buzzer.py",
    "sensors/tilt.py",
    "sensors/lis3dh.py",
    "sensors/water_level.py",
    "sensors/a02yyuw.py",
    "sensors/meter.py",
    "sensors/pulse.py",
    "sensors/electricity.py",
    "sensors/modbus.py",
    "sensors/sdm120.py",
    "radios/__init__.py",
    "radios/ble.py",
    "radios/lora_at.py",
    "radios/airtime.py",
    "radios/nbiot.py",
    "radios/mqtt.py",
)
