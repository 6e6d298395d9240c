"""Device profiles: the built-in TOML files beside this file, their loader (`profiles`), whether one describes
this machine (`host`), `edgekit profiles` (`cli`)."""

from device_profiles.host import Host, host_label, host_mismatch, mismatch_label
from device_profiles.profiles import (
    BuildTarget,
    DeviceProfile,
    ProfileError,
    RuntimeSetting,
    builtin_names,
    host_profile_name,
    list_profiles,
    load_profile,
    parse_profile,
)

__all__ = [
    "BuildTarget",
    "DeviceProfile",
    "Host",
    "ProfileError",
    "RuntimeSetting",
    "builtin_names",
    "host_label",
    "host_mismatch",
    "host_profile_name",
    "list_profiles",
    "load_profile",
    "mismatch_label",
    "parse_profile",
]
