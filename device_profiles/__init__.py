"""Device profiles: the built-in TOML files beside this file, their loader (`profiles`), `edgekit profiles` (`cli`)."""

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
    "ProfileError",
    "RuntimeSetting",
    "builtin_names",
    "host_profile_name",
    "list_profiles",
    "load_profile",
    "parse_profile",
]
