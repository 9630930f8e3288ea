"""Keep-masks held as bits: one eighth of a byte per weight, in memory and on disk.

``MaskStore`` maps a weight's name to its bool keep-mask like a dict, but keeps every mask of a device in one flat
``uint8`` buffer (each mask starting on a byte). Reading ``store[name]`` unpacks that mask; masking the model
(:meth:`MaskStore.apply`) unpacks a chunk of layers at a time and multiplies all of them by one foreach op, so the
ops a step costs do not grow with the number of layers and the unpacked masks exist only while they are applied.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, MutableMapping, Tuple

import torch

from .sharding import mask_all_

__all__ = ["MaskStore", "pack_bits", "unpack_bits", "CHUNK_ELEMENTS"]

#: most weights one transient unpacked chunk covers (64 MiB of bool)
CHUNK_ELEMENTS = 1 << 26
_BIT_VALUES: Dict[torch.device, torch.Tensor] = {}


def _bit_values(device: torch.device) -> torch.Tensor:
    if device not in _BIT_VALUES:
        _BIT_VALUES[device] = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)
    return _BIT_VALUES[device]


def _byte_count(numel: int) -> int:
    return (numel + 7) // 8


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Flat ``uint8`` of ``ceil(numel / 8)`` bytes; bit ``i % 8`` of byte ``i // 8`` is element ``i`` (a padded
    tail is 0)."""
    flat = mask.reshape(-1).to(torch.uint8)
    padding = _byte_count(flat.numel()) * 8 - flat.numel()
    if padding:
        flat = torch.cat([flat, flat.new_zeros(padding)])
    return (flat.view(-1, 8) * _bit_values(flat.device)).sum(dim=1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat bool tensor of ``numel`` elements that ``pack_bits`` packed into ``bits``."""
    return (bits.view(-1, 1) & _bit_values(bits.device)).ne(0).view(-1)[:numel]


class _Layout:
    """Where each mask of one device sits in that device's flat buffer, and how layers group into chunks."""

    def __init__(self, shapes: Dict[str, Tuple[int, ...]]) -> None:
        self.names: List[str] = list(shapes)
        self.shapes = shapes
        self.numels = {name: int(torch.Size(shape).numel()) for name, shape in shapes.items()}
        self.byte_offsets: Dict[str, int] = {}
        offset = 0
        for name in self.names:
            self.byte_offsets[name] = offset
            offset += _byte_count(self.numels[name])
        self.total_bytes = offset
        self.chunks: List[List[str]] = [[]]
        elements = 0
        for name in self.names:
            if self.chunks[-1] and elements + self.numels[name] > CHUNK_ELEMENTS:
                self.chunks.append([])
                elements = 0
            self.chunks[-1].append(name)
            elements += self.numels[name]


class MaskStore(MutableMapping):
    """Bool keep-masks by weight name, stored as bits; every mask starts as all ones (keep everything)."""

    def __init__(self, shapes: Dict[str, Tuple[Tuple[int, ...], torch.device]]) -> None:
        by_device: Dict[torch.device, Dict[str, Tuple[int, ...]]] = {}
        for name, (shape, device) in shapes.items():
            by_device.setdefault(torch.device(device), {})[name] = tuple(shape)
        self._layouts = {device: _Layout(members) for device, members in by_device.items()}
        self._buffers = {device: torch.full((layout.total_bytes,), 255, dtype=torch.uint8, device=device)
                         for device, layout in self._layouts.items()}
        self._device_of = {name: device for device, layout in self._layouts.items() for name in layout.names}

    # ---- the dict interface ----------------------------------------------------------------------------
    def _segment(self, name: str) -> torch.Tensor:
        device = self._device_of[name]
        layout = self._layouts[device]
        start = layout.byte_offsets[name]
        return self._buffers[device][start:start + _byte_count(layout.numels[name])]

    def __getitem__(self, name: str) -> torch.Tensor:
        layout = self._layouts[self._device_of[name]]
        return unpack_bits(self._segment(name), layout.numels[name]).view(layout.shapes[name])

    def __setitem__(self, name: str, mask: torch.Tensor) -> None:
        if name not in self._device_of:
            raise KeyError(f"{name!r} has no place in this mask store (its layers are fixed when it is built)")
        layout = self._layouts[self._device_of[name]]
        if tuple(mask.shape) != layout.shapes[name]:
            raise ValueError(f"mask of {name!r} has shape {tuple(mask.shape)}, expected {layout.shapes[name]}")
        segment = self._segment(name)
        segment.copy_(pack_bits(mask.to(segment.device, torch.bool)))

    def __delitem__(self, name: str) -> None:
        raise TypeError("masks of a MaskStore cannot be removed (its layers are fixed when it is built)")

    def __iter__(self) -> Iterator[str]:
        return iter(self._device_of)

    def __len__(self) -> int:
        return len(self._device_of)

    # ---- what the pruner needs --------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return sum(buffer.numel() for buffer in self._buffers.values())

    def numel(self, name: str) -> int:
        return self._layouts[self._device_of[name]].numels[name]

    def pruned_count(self, name: str) -> int:
        """Masked (zero) entries of ``name``'s mask."""
        return self.numel(name) - int(self[name].sum())

    def follow(self, device_of: Callable[[str], torch.device]) -> None:
        """Move each device's buffer to where its weights now are (the model moved after the store was built)."""
        for device in list(self._buffers):
            target = torch.device(device_of(self._layouts[device].names[0]))
            if target != device:
                buffer, layout = self._buffers.pop(device), self._layouts.pop(device)
                self._buffers[target], self._layouts[target] = buffer.to(target), layout
                self._device_of.update({name: target for name in layout.names})

    @torch.no_grad()
    def apply(self, params: Dict[str, torch.Tensor], finite: bool) -> None:
        """Multiply each ``params[name]`` by its mask (``mask_all_``), a chunk of layers unpacked at a time."""
        for device, layout in self._layouts.items():
            buffer = self._buffers[device]
            for names in layout.chunks:
                first, last = names[0], names[-1]
                start = layout.byte_offsets[first]
                stop = layout.byte_offsets[last] + _byte_count(layout.numels[last])
                unpacked = unpack_bits(buffer[start:stop], (stop - start) * 8)
                views = []
                for name in names:
                    begin = (layout.byte_offsets[name] - start) * 8
                    views.append(unpacked[begin:begin + layout.numels[name]].view(layout.shapes[name]))
                mask_all_([params[name] for name in names], views, finite)

