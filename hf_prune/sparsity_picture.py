"""A per-layer picture of a model's sparsity (PNG), for ``hf-prune report --png`` and the model card.

One horizontal bar per 2-D weight, its length the weight's sparsity and its colour the pattern the weight
satisfies (:mod:`hf_prune.weight_patterns`), so a card shows at a glance which layers were pruned, how far and how.
Drawn with Pillow (the optional ``vision`` extra), which needs no display and no font files.
"""
from __future__ import annotations

from typing import Dict, Sequence

from .weight_patterns import LayerPattern

__all__ = ["write_sparsity_picture", "PATTERN_COLOURS"]

#: bar colours by the family of pattern a weight satisfies (:data:`hf_prune.weight_patterns.FAMILIES`; a dense
#: weight has no bar)
PATTERN_COLOURS: Dict[str, tuple] = {"N:M": (31, 119, 180), "blocks": (44, 160, 44), "removed": (214, 39, 40),
                                     "unstructured": (127, 127, 127)}
_ROW, _LABEL, _BAR, _MARGIN = 14, 330, 360, 8


def _label(name: str, width: int) -> str:
    """``name`` shortened from the left to about ``width`` pixels of the default font (6 px a character)."""
    characters = width // 6
    return name if len(name) <= characters else "..." + name[-(characters - 3):]


def write_sparsity_picture(rows: Sequence[LayerPattern], path: str, title: str = "") -> str:
    """Draw ``rows`` (one bar per weight, in order) into the PNG file ``path``; returns ``path``."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise ValueError("the sparsity picture is drawn with Pillow: pip install 'hf-prune[vision]'") from None
    rows = list(rows)
    legend_height = 2 * _ROW
    height = _MARGIN * 2 + _ROW * (len(rows) + 1) + legend_height
    image = Image.new("RGB", (_LABEL + _BAR + 70, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_MARGIN, _MARGIN), title or "sparsity per weight (bar: fraction of zeros, colour: pattern)", fill="black")
    top = _MARGIN + _ROW
    for index, row in enumerate(rows):
        y = top + index * _ROW
        draw.text((_MARGIN, y), _label(row.name, _LABEL - 2 * _MARGIN), fill="black")
        draw.rectangle([_LABEL, y + 2, _LABEL + _BAR, y + _ROW - 3], outline=(220, 220, 220))
        if row.zeros:
            draw.rectangle([_LABEL, y + 2, _LABEL + round(_BAR * row.sparsity), y + _ROW - 3], fill=PATTERN_COLOURS[row.family])
        draw.text((_LABEL + _BAR + 6, y), f"{row.sparsity:.3f}", fill="black")
    x, y = _MARGIN, top + len(rows) * _ROW + _ROW // 2
    for family, colour in PATTERN_COLOURS.items():
        draw.rectangle([x, y + 2, x + 10, y + _ROW - 3], fill=colour)
        draw.text((x + 14, y), family, fill="black")
        x += 14 + 6 * len(family) + 20
    image.save(path, format="PNG")
    return path

