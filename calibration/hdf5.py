"""Stage results in HDF5 groups: frozen dataclasses of numpy arrays and scalars, with a schema name
and version on every group so that a foreign or older group is refused with a clear message."""

from __future__ import annotations

import typing
from dataclasses import fields

import numpy as np

from .errors import CalibrationFileError


def write_dataclass(group, obj, schema: str, version: int) -> None:
    """Write a frozen dataclass of numpy arrays and scalars into an h5py group (arrays as datasets,
    gzip-compressed when 2-D or more; scalars as attributes) with ``schema`` and ``schema_version``."""
    group.attrs["schema"] = schema
    group.attrs["schema_version"] = version
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            group.create_dataset(f.name, data=value, compression="gzip" if value.ndim > 1 else None)
        else:
            group.attrs[f.name] = value


def read_dataclass(cls, group, schema: str, version: int):
    """Read a dataclass written by :func:`write_dataclass`, checking the schema, its version and
    that every field is present (:class:`CalibrationFileError` naming what is wrong)."""
    found = group.attrs.get("schema")
    found = found.decode() if isinstance(found, bytes) else found
    if found != schema:
        raise CalibrationFileError(f"{group.name}: schema {found!r}, expected {schema!r}")
    found_version = group.attrs.get("schema_version")
    if found_version is None or int(found_version) != version:
        shown = None if found_version is None else int(found_version)
        raise CalibrationFileError(f"{group.name}: {schema} version {shown}, this toolkit reads version {version}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        kind = hints[f.name]
        if kind is np.ndarray:
            if f.name not in group:
                raise CalibrationFileError(f"{group.name}: dataset {f.name!r} missing (truncated file?)")
            values[f.name] = group[f.name][()]
        else:
            if f.name not in group.attrs:
                raise CalibrationFileError(f"{group.name}: attribute {f.name!r} missing (truncated file?)")
            values[f.name] = kind(group.attrs[f.name])
    return cls(**values)


# =============================================================================================== measuring
