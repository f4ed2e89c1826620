"""Secrets never leave memory: the one function that redacts settings and URLs.

A run config can hold secrets: an engine setting such as Spark's
``spark.hadoop.fs.s3a.secret.key`` under ``spark.conf``, a location or master URL given as
``s3://KEY:SECRET@bucket/...``. resflow uses them as given, but everything it writes or
prints (run reports, store attributes, logs, error messages, the stop message) goes through
:func:`redact` first.

Credentials belong in the environment or a profile (:mod:`resflow.storage`); this is the
safety net for those given in settings anyway.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
"""What a redacted value becomes."""

SECRET_KEY = re.compile(
    r"secret|passw(or)?d|token|credential|access[._-]?key|private[._-]?key|api[._-]?key"
    r"|signature|authoriz", re.IGNORECASE)
"""A setting or query parameter whose name matches holds a secret."""

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"?#]+@")
_QUERY = re.compile(r"(?P<key>[?&;][^=&;#\s'\"]+)=(?P<value>[^&;#\s'\"]*)")


def is_secret_key(name: object) -> bool:
    """Whether a setting of this name holds a secret.

    >>> is_secret_key("spark.hadoop.fs.s3a.secret.key"), is_secret_key("fs.s3a.access.key")
    (True, True)
    >>> is_secret_key("spark.executor.memory")
    False
    """
    return isinstance(name, str) and bool(SECRET_KEY.search(name))


def redact_text(text: str) -> str:
    """``text`` with the credentials of every URL in it and secret query values masked.

    >>> redact_text("copy s3://KEY:SECRET@bucket/a.zarr done")
    'copy s3://***@bucket/a.zarr done'
    >>> redact_text("https://h/x.tif?X-Amz-Signature=abc&part=1")
    'https://h/x.tif?X-Amz-Signature=***&part=1'
    """
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['key']}={MASK}" if is_secret_key(m["key"][1:])
                      and m["value"] else m.group(0), text)


def redact(value: Any, key: object = None) -> Any:
    """``value`` as it may be written or printed: a copy with every secret masked.

    Mappings are walked (a value under a secret key becomes ``"***"``, whatever it is but
    a flag or empty), lists and tuples
    too, strings lose URL credentials and secret query values (:func:`redact_text`), other
    values are returned as they are. ``key`` is the name ``value`` is held under, if any.
    It replaces:

    - the value of any setting whose key names a secret (:data:`SECRET_KEY`: ``secret``,
      ``password``, ``token``, ``credential``, ``access.key``..., any case) by ``"***"``;
    - the user and password of a URL (``scheme://user:secret@host``) by ``***``, wherever
      the URL appears in a text;
    - the value of a URL query parameter whose name names a secret
      (``?X-Amz-Signature=...``, ``&token=...``) by ``***``.

    >>> redact({"spark": {"conf": {"spark.hadoop.fs.s3a.secret.key": "s3cr3t",
    ...                            "spark.executor.memory": "2g"}},
    ...         "out": "s3://AKIA:s3cr3t@bucket/maps.zarr"})
    {'spark': {'conf': {'spark.hadoop.fs.s3a.secret.key': '***', 'spark.executor.memory': \
'2g'}}, 'out': 's3://***@bucket/maps.zarr'}
    """
    if is_secret_key(key) and value not in (None, "", {}, []) and not isinstance(value, bool):
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value
