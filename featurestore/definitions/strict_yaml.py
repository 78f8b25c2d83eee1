"""YAML for definitions files: ``yaml.safe_load``, but strict about keys given twice, and
an unquoted non-finite number kept as written where a derived feature takes text."""

from __future__ import annotations

import math
from typing import Any

import yaml


class DuplicateKey(yaml.YAMLError):
    """``line N: key 'ttl' given twice`` (N counts from 1, as editors do)."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"line {line}: key {key!r} given twice")
        self.key, self.line = key, line


class NonFiniteText(str):
    """An unquoted scalar YAML reads as an infinite or NaN float (``1.0e+999``, ``.inf``,
    ``.nan``) as the value of a key that takes text (an ``expression``), as written: the
    float's text is ``inf``, which an error would name as if it were written."""


_TEXT_KEYS = frozenset({"expression"})
_FEATURE_KEYS = frozenset({"name", "dtype", "expression"})  # a mapping of a derived feature
_FLOAT_TAG = "tag:yaml.org,2002:float"
_NON_FINITE_TAG = "!featurestore/non-finite-text"


class StrictLoader(yaml.SafeLoader):
    """``yaml.safe_load``, but a key given twice in one mapping is an error: PyYAML keeps
    the last, so a second ``ttl:`` replaced the first and a second ``feature_views:``
    block (files merged by hand) dropped every view of the first, and validate said OK.
    Keys a merge (``<<: *base``) brings in may still be overridden, as YAML means.

    Each mapping's own keys are checked once, as written: before PyYAML's merge rewrites
    the node in place (``flatten_mapping`` replaces its ``<<`` with the keys it brings in,
    and may do so before the node itself is built, when another mapping merges it)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()  # ids of the mapping nodes whose keys were checked

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._check_keys(node)
        super().flatten_mapping(node)  # (merge sources come back here first, unmerged)
        keys = {k.value for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        if not keys >= _FEATURE_KEYS:  # only a derived feature's (a filter or tags keep YAML's value)
            return
        for key_node, value_node in node.value:
            if (
                isinstance(key_node, yaml.ScalarNode)
                and key_node.value in _TEXT_KEYS
                and isinstance(value_node, yaml.ScalarNode)
                and value_node.tag == _FLOAT_TAG
                and not math.isfinite(self.construct_yaml_float(value_node))
            ):
                value_node.tag = _NON_FINITE_TAG

    def _check_keys(self, node: yaml.MappingNode) -> None:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # an unhashable key: construct_mapping names it
                continue


StrictLoader.add_constructor(_NON_FINITE_TAG, lambda _loader, node: NonFiniteText(node.value))
