"""YAML for definitions files: ``yaml.safe_load``, but strict about keys given twice."""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKey(yaml.YAMLError):
    """``line N: key 'ttl' given twice`` (N counts from 1, as editors do)."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"line {line}: key {key!r} given twice")
        self.key, self.line = key, line


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
