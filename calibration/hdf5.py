"""The HDF5 codec of every stored calibration result: one h5py group per result, stamped with a
schema name and version, its arrays checksummed.

Layout of a group written here:

* attributes ``schema`` and ``schema_version`` (a foreign or older group is refused on read);
* every array as a dataset with a Fletcher-32 checksum (chunked; gzip-compressed when 2-D or more),
  verified by HDF5 at every read: a dataset whose bytes changed raises
  :class:`~calibration.errors.CalibrationFileError` naming the file and the dataset;
* every scalar, string or tuple of numbers as an attribute;
* every mapping or list as an attribute ``NAME_json`` holding its JSON.

Public API:

:func:`write_group` / :func:`read_group`
    Named arrays, scalars and JSON values in, a mapping of them out (for results that are not a flat
    dataclass, e.g. :class:`~calibration.fit.MismatchFit`).
:func:`write_dataclass` / :func:`read_dataclass`
    A dataclass whose fields are ``np.ndarray`` (datasets), ``int``/``float``/``bool``/``str`` or
    ``tuple[...]`` (attributes) and ``dict``/``list`` (JSON attributes), by its type hints.
:func:`check_schema`, :func:`read_array`
    The two checks every read goes through, for a reader that needs them alone.
"""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from typing import Any, Iterable

import numpy as np

from .errors import CalibrationFileError


def write_group(group, schema: str, version: int, *, arrays: dict[str, np.ndarray] | None = None,
                attrs: dict[str, Any] | None = None, json_attrs: dict[str, Any] | None = None) -> None:
    """Write one result into the empty h5py ``group`` (layout: module docstring).

    Parameters
    ----------
    group : h5py.Group
        Must hold nothing yet.
    schema, version : str, int
        The result's schema name and version, checked by :func:`read_group`.
    arrays : mapping name -> array
        Datasets (checksummed; gzip when 2-D or more). Structured arrays are allowed.
    attrs : mapping name -> int, float, bool, str or tuple of numbers
        Attributes.
    json_attrs : mapping name -> JSON-serialisable value
        Stored as the attribute ``NAME_json``.
    """
    if len(group) or len(group.attrs):
        raise CalibrationFileError(f"HDF5 group {group.name!r} must be empty, it holds {sorted(group)} "
                                   f"{sorted(group.attrs)}")
    group.attrs["schema"] = schema
    group.attrs["schema_version"] = version
    for name, value in (attrs or {}).items():
        group.attrs[name] = value
    for name, value in (json_attrs or {}).items():
        group.attrs[f"{name}_json"] = json.dumps(value)
    for name, value in (arrays or {}).items():
        value = np.asarray(value)
        group.create_dataset(name, data=value, fletcher32=value.ndim > 0,
                             compression="gzip" if value.ndim > 1 else None)


def read_group(group, schema: str, version: int, *, arrays: Iterable[str] = (), attrs: Iterable[str] = (),
               json_attrs: Iterable[str] = ()) -> dict[str, Any]:
    """Read what :func:`write_group` wrote: the schema checked, the named arrays (checksums verified),
    attributes (as stored) and JSON values (decoded), in one mapping by name. Anything missing,
    foreign or corrupted raises :class:`~calibration.errors.CalibrationFileError` naming it."""
    check_schema(group, schema, version)
    values = {name: read_array(group, name) for name in arrays}
    for name in attrs:
        values[name] = _attribute(group, name)
    for name in json_attrs:
        text = _attribute(group, f"{name}_json")
        try:
            values[name] = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise CalibrationFileError(f"{_where(group)}: attribute {name + '_json'!r} is not JSON ({exc})") from exc
    return values


def check_schema(group, schema: str, version: int) -> None:
    """Refuse (:class:`~calibration.errors.CalibrationFileError`) a group of another schema or version."""
    found = group.attrs.get("schema")
    found = found.decode() if isinstance(found, bytes) else found
    if found != schema:
        raise CalibrationFileError(f"{_where(group)}: schema {found!r}, expected {schema!r}")
    found_version = group.attrs.get("schema_version")
    if found_version is None or int(found_version) != version:
        shown = None if found_version is None else int(found_version)
        raise CalibrationFileError(f"{_where(group)}: {schema} version {shown}, this toolkit reads version {version}")


def read_array(group, name: str) -> np.ndarray:
    """The dataset ``name`` of ``group``, its checksum verified by HDF5; a missing dataset, or one whose
    bytes fail the checksum or decompression, raises :class:`~calibration.errors.CalibrationFileError`."""
    if name not in group:
        raise CalibrationFileError(f"{_where(group)}: dataset {name!r} missing (truncated file?)")
    dataset = group[name]
    try:
        return dataset[()]
    except OSError as exc:  # HDF5's Fletcher-32 (or gzip) filter refusing changed bytes
        raise CalibrationFileError(f"{dataset.file.filename}: dataset {dataset.name} is corrupted (its checksum "
                                   f"or compression does not match its bytes): {exc}") from exc


def write_dataclass(group, obj, schema: str, version: int) -> None:
    """Write a dataclass (fields as in the module docstring) with :func:`write_group`."""
    arrays, attrs, json_attrs = {}, {}, {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.ndarray):
            arrays[f.name] = value
        elif isinstance(value, (dict, list)):
            json_attrs[f.name] = value
        else:
            attrs[f.name] = value
    write_group(group, schema, version, arrays=arrays, attrs=attrs, json_attrs=json_attrs)


def read_dataclass(cls, group, schema: str, version: int):
    """Read a dataclass ``cls`` written by :func:`write_dataclass`, converting each attribute to its
    field's type (:class:`~calibration.errors.CalibrationFileError` naming what is wrong)."""
    hints = typing.get_type_hints(cls)
    kinds = {f.name: _kind(hints[f.name]) for f in fields(cls)}
    values = read_group(group, schema, version, arrays=[n for n, k in kinds.items() if k is np.ndarray],
                        attrs=[n for n, k in kinds.items() if k not in (np.ndarray, dict, list)],
                        json_attrs=[n for n, k in kinds.items() if k in (dict, list)])
    for name, kind in kinds.items():
        if kind is tuple:
            values[name] = tuple(np.asarray(values[name]).tolist())
        elif kind in (int, float, bool, str):
            value = values[name]
            values[name] = kind(value.decode() if isinstance(value, bytes) else value)
    return cls(**values)


def _kind(hint) -> type:
    """The container or scalar type behind a field's type hint (``tuple[int, int]`` -> tuple)."""
    origin = typing.get_origin(hint)
    return origin if origin in (tuple, dict, list) else hint


def _attribute(group, name: str):
    if name not in group.attrs:
        raise CalibrationFileError(f"{_where(group)}: attribute {name!r} missing (truncated file?)")
    return group.attrs[name]


def _where(group) -> str:
    return f"{group.file.filename}:{group.name}"


__all__ = ["check_schema", "read_array", "read_dataclass", "read_group", "write_dataclass", "write_group"]
