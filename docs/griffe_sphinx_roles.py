"""Griffe extension of the API reference: the docstrings' Sphinx roles as mkdocstrings cross-references.

The docstrings write ``:class:`~metajax.operators.SingleCoilMRI``` (readable in the source and in ``help()``);
this turns each role into the cross-reference ``[`SingleCoilMRI`][metajax.operators.SingleCoilMRI]``, so
``mkdocs build --strict`` fails on a reference to a name that does not exist.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`(~?)([^`<>]+)`")


def _link(match: re.Match) -> str:
    short, target = match.group(1) == "~", match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if short else target
    return f"[`{shown}`][{target}]"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_link, obj.docstring.value)
