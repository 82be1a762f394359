"""Row storage in pages: growing it never copies what is already stored.

A bank that grew by reallocating one tensor (doubling) held the old and the new storage at once
during the copy, so its peak memory was up to 3x what it stored (1.8x measured at a million
tokens). :class:`PagedTensor` adds a page instead; rows are addressed by a global slot index.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import torch


class PagedTensor:
    """A ``[rows, *row_shape]`` tensor kept as a list of pages (``[n_i, *row_shape]`` each).

    Supports what a memory bank needs: ``t[i]`` (a view of one row), ``t[slots]`` for a 1-D
    LongTensor or a slice (a copy, in the order given), assignment to an int, a slice or a
    LongTensor of rows, and :meth:`extend`.

    Args:
        make_page: ``n -> Tensor[n, *row_shape]`` (zeroed): allocates a page where it must live
            (device, pinned host memory, a memory-mapped file).
    """

    def __init__(self, make_page: Callable[[int], torch.Tensor]):
        self._make_page = make_page
        self.pages: list[torch.Tensor] = []
        self._starts: list[int] = []  # global index of each page's first row
        self._size = 0
        probe = make_page(0)
        self.row_shape, self.dtype, self.device = tuple(probe.shape[1:]), probe.dtype, probe.device

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._size, *self.row_shape))

    def __len__(self) -> int:
        return self._size

    def numel(self) -> int:
        return self.shape.numel()

    def element_size(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    def extend(self, n: int) -> None:
        """Adds ``n`` zeroed rows in a new page; nothing stored moves."""
        if n <= 0:
            return
        page = self._make_page(n)
        self.pages.append(page)
        self._starts.append(self._size)
        self._size += n

    def __deepcopy__(self, memo: dict) -> PagedTensor:
        """A copy whose pages are allocated where this one's are (by ``make_page``): the copy of a
        bank kept in memory-mapped files is in new memory-mapped files, not in RAM."""
        new = PagedTensor(self._make_page)
        for page in self.pages:
            new.extend(page.shape[0])
            new.pages[-1].copy_(page)
        memo[id(self)] = new
        return new

    # ------------------------------------------------------------------ addressing
    def _locate(self, i: int) -> tuple[int, int]:
        if not -self._size <= i < self._size:
            raise IndexError(f"row {i} out of range for {self._size} rows")
        i %= self._size
        p = bisect.bisect_right(self._starts, i) - 1
        return p, i - self._starts[p]

    def _rows(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            return torch.arange(self._size)[index]
        index = torch.as_tensor(index)
        if index.dtype == torch.bool or index.is_floating_point():
            raise IndexError(f"PagedTensor takes integer row indices, not a {index.dtype} tensor")
        index = index.to(device="cpu", dtype=torch.long)
        if index.dim() != 1:
            raise IndexError(f"PagedTensor takes an int, a slice or a 1-D index; got shape {tuple(index.shape)}")
        if index.numel() and (index.min() < -self._size or index.max() >= self._size):
            raise IndexError(f"rows {index.tolist()} out of range for {self._size} rows")
        return index % max(self._size, 1)

    def _by_page(self, rows: torch.Tensor):
        """Yields ``(page, positions in rows, offsets in the page)`` for the pages ``rows`` touch."""
        starts = torch.tensor(self._starts, dtype=torch.long)
        page_of = torch.searchsorted(starts, rows, right=True) - 1
        for p in page_of.unique().tolist():
            where = (page_of == p).nonzero().flatten()
            yield self.pages[p], where, rows[where] - self._starts[p]

    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, int):
            p, off = self._locate(index)
            return self.pages[p][off]
        rows = self._rows(index)
        out = torch.empty((rows.numel(), *self.row_shape), dtype=self.dtype, device=self.device)
        for page, where, offs in self._by_page(rows):
            out[where.to(out.device)] = page[offs.to(page.device)]
        return out

    def __setitem__(self, index, value) -> None:
        if isinstance(index, int):
            p, off = self._locate(index)
            self.pages[p][off] = value
            return
        rows = self._rows(index)
        value = torch.as_tensor(value)
        if value.dim() == len(self.row_shape):  # one row broadcast to all
            value = value.expand(rows.numel(), *self.row_shape)
        for page, where, offs in self._by_page(rows):
            page[offs.to(page.device)] = value[where.to(value.device)].to(device=page.device, dtype=page.dtype)
