"""`Record`: the base of the Store's typed results. Fields are read as attributes; a record also
reads as a mapping (`row["images"]`, `"class"` for `class_name`), which is how JSON output, the web
page's templates and scripts written against the plain rows read it. Report views' own rows stay
dicts: their columns are the view's (sql/*.sql), ready for pandas.

Standard library only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

# a column a Python field cannot be called
_ALIASES = {"class": "class_name"}


@dataclass
class Record:
    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, _ALIASES.get(key, key))
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and hasattr(self, _ALIASES.get(key, key))

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def as_dict(self) -> dict[str, Any]:
        """The record as plain data (nested records and dataclasses too), for JSON."""
        return asdict(self)
