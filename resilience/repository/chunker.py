"""Content-defined chunking (FastCDC 2020, via pyfastcdc's Cython core, GIL released).

The gear table is XORed with the repository's secret seed, so cut points differ between
repositories and cannot be used to fingerprint known files by their chunk sizes. Data
shorter than the minimum chunk size is one chunk. Instances are not thread-safe: use one
per thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC


class Chunker:
    def __init__(self, params: dict[str, int]):
        self.min = int(params["min"])
        self._cdc = FastCDC(avg_size=int(params["avg"]), min_size=self.min, max_size=int(params["max"]),
                            seed=int(params["seed"]))

    def cut(self, data: bytes) -> Iterator[memoryview | bytes]:
        """Chunks of an in-memory buffer (memoryviews into ``data``)."""
        if len(data) <= self.min:
            yield data
            return
        for c in self._cdc.cut_buf(data):
            yield c.data

    def cut_stream(self, f: BinaryIO) -> Iterator[memoryview]:
        """Chunks of a stream; each chunk is valid only until the next one is produced."""
        for c in self._cdc.cut_stream(f):
            yield c.data
