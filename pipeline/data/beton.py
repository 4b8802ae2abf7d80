"""A resumable writer of FFCV betons, byte for byte the file FFCV's `DatasetWriter` writes as
one process (`num_workers=1`).

FFCV 1.0.2 (ffcv/writer.py, memory_allocator.py) lays a beton out as

    header | field descriptors | one metadata row per sample | pages | allocation table

Samples go in index order into fixed-size pages (8 MiB); a sample that does not fit in what is
left of a page starts the next one, and the rest of the page stays zero. With several writer
processes FFCV's pages follow the order in which the processes finish, so the bytes change from
run to run; with one they follow the index order, and that layout is the one written here
(tests/test_data_beton.py compares the two files byte for byte).

What differs is how, never what:

- encoding (the JPEG compression of `proportion` mode is most of a writer's work) runs wherever
  the caller likes, in worker processes for instance: `encode_sample` runs FFCV's own field
  encoders against a recording allocator, and `BetonWriter.append` places the recorded bytes;
- `checkpoint()` makes the file resumable at any sample boundary, and `BetonWriter.open`
  continues from the last checkpoint instead of starting over. What a checkpoint writes: the
  metadata rows so far and the page being filled (into the partial file, at their final
  places), the allocation table so far (a side file), fsync, then a small state file saying how
  far they reach, replaced atomically. A kill at any moment leaves the previous checkpoint
  valid: the bytes written after it lie beyond what it records, and are cut off on resume.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ffcv.types import (ALLOC_TABLE_TYPE, CURRENT_VERSION, TYPE_ID_HANDLER, FieldDescType, HeaderType,
                        get_metadata_type)
from ffcv.utils import align_to_page
from ffcv.writer import MIN_PAGE_SIZE

PAGE_SIZE = 4 * MIN_PAGE_SIZE  # DatasetWriter's default
STATE_FORMAT = 1
# Where an encoded sample's data will lie is known only when it is placed: the recording allocator
# hands out this value (no beton is 8 EiB long), and `append` swaps in the real file offset.
_UNPLACED = 1 << 63
_POINTER_KEYS = ("data_ptr", "ptr")  # where FFCV's fields keep the offset malloc gave them


@dataclass
class EncodedSample:
    """One sample as FFCV's field encoders made it: its metadata row (data pointer unset) and the
    bytes it asked room for. Picklable, so worker processes can encode."""

    row: np.ndarray  # shape (1,), the beton's metadata dtype
    data: np.ndarray | None  # uint8; None for a sample of scalar fields only


def encode_sample(fields: dict, values: tuple) -> EncodedSample:
    """Run each field's `encode` as FFCV's writer does (ffcv.writer.handle_sample), recording the
    one allocation a sample may make (an image field beside scalars, as our betons hold)."""
    metadata_type = get_metadata_type(list(fields.values()))
    row = np.zeros(1, metadata_type)
    data: list[np.ndarray] = []

    def malloc(size: int):
        data.append(np.zeros(size, "<u1"))
        return _UNPLACED, data[-1]

    for name, field, value in zip(metadata_type.names, fields.values(), values):
        field.encode(row[name][0:1], value, malloc)
    if len(data) > 1:
        # FFCV retries a sample whose second allocation spills into a new page, encoding it again
        # (and redrawing its random JPEG choice): not reproducible from recorded bytes.
        raise ValueError(f"a sample made {len(data)} allocations; BetonWriter places one per sample "
                         f"(fields {[type(f).__name__ for f in fields.values()]})")
    return EncodedSample(row, data[0] if data else None)


class BetonWriter:
    """Writes one beton of `num_samples` samples, appended in index order. Files beside `path`
    while unfinished: `.<name>.partial` (the beton so far), `.<name>.alloc` (the allocation
    table so far), `.<name>.state.json` (the last checkpoint). `finish()` renames the partial
    file to `path`; the state file then records the beton as complete."""

    def __init__(self, path: str | Path, fields: dict, num_samples: int, key: str, page_size: int = PAGE_SIZE):
        self.path = Path(path)
        self.fields = fields
        self.num_samples = num_samples
        self.key = key  # what the samples are (input files, settings): a checkpoint of another key is not resumed
        self.page_size = page_size
        self.metadata_type = get_metadata_type(list(fields.values()))
        self.metadata_start = HeaderType.itemsize + len(fields) * FieldDescType.itemsize
        metadata_end = self.metadata_start + num_samples * self.metadata_type.itemsize
        self.data_start = align_to_page(metadata_end, page_size)
        self.metadata = np.zeros(num_samples, self.metadata_type)
        self.allocations: list[tuple[int, int, int]] = []  # (sample, offset, size), FFCV's table rows
        self.next = 0  # the next sample to append
        self.page = -1  # the page being filled (-1: none yet)
        self.used = 0  # bytes of it taken
        self.page_data = np.zeros(page_size, "<u1")
        self.complete = False
        self._saved = (0, 0)  # metadata rows and allocations on disk as of the last checkpoint
        self._fd: int | None = None

    # --- files -----------------------------------------------------------------------------------

    def _side(self, suffix: str) -> Path:
        return self.path.with_name(f".{self.path.name}.{suffix}")

    @property
    def partial(self) -> Path:
        return self._side("partial")

    @property
    def state_file(self) -> Path:
        return self._side("state.json")

    def _state(self) -> dict:
        return {"format": STATE_FORMAT, "key": self.key, "num_samples": self.num_samples, "page_size": self.page_size,
                "next": self.next, "page": self.page, "used": self.used, "allocations": len(self.allocations),
                "complete": self.complete}

    def _write_state(self) -> None:
        tmp = self._side(f"state.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self._state()) + "\n")
        os.replace(tmp, self.state_file)

    def remove(self) -> None:
        """Forget this beton: its partial files, its state and the finished file."""
        for p in (self.partial, self._side("alloc"), self.state_file, self.path):
            p.unlink(missing_ok=True)

    @classmethod
    def open(cls, path: str | Path, fields: dict, num_samples: int, key: str, page_size: int = PAGE_SIZE,
             log=print) -> "BetonWriter":
        """A writer that continues the checkpoint left at `path` by a writer of the same key, or
        starts afresh (removing what another key left)."""
        w = cls(path, fields, num_samples, key, page_size)
        w.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            state = json.loads(w.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = None
        expected = {k: v for k, v in w._state().items() if k in ("format", "key", "num_samples", "page_size")}
        if state is not None and all(state.get(k) == v for k, v in expected.items()):
            try:
                if w._resume(state):
                    return w
            except OSError as err:
                log(f"{w.path}: its checkpoint cannot be read back ({err}); starting it over")
        elif state is not None:
            log(f"{w.path}: the checkpoint left there is of other input or settings; starting over")
        w.remove()
        w._start()
        return w

    def _start(self) -> None:
        # header and field descriptors as ffcv.writer.DatasetWriter.prepare writes them
        header = np.zeros(1, dtype=HeaderType)[0]
        header["version"] = CURRENT_VERSION
        header["num_samples"] = self.num_samples
        header["num_fields"] = len(self.fields)
        header["page_size"] = self.page_size
        descriptors = np.zeros(len(self.fields), dtype=FieldDescType)
        type_ids = {v: k for k, v in TYPE_ID_HANDLER.items()}
        max_name = descriptors[0]["name"].shape[0]
        for i, (name, field) in enumerate(self.fields.items()):
            encoded = np.frombuffer(name.encode("ascii"), dtype="<u1")[:max_name]
            descriptors[i]["type_id"] = type_ids.get(type(field), 255)
            descriptors[i]["name"][:len(encoded)] = encoded
            descriptors[i]["arguments"][:] = field.to_binary()[0]
        self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.pwrite(self._fd, header.tobytes() + descriptors.tobytes(), 0)
        self._side("alloc").write_bytes(b"")

    def _resume(self, state: dict) -> bool:
        """Take up the checkpoint `state`; False when its files are not all there."""
        if state["complete"]:
            if self.path.is_file():
                self.complete, self.next = True, self.num_samples
            return self.complete
        n, page, used, n_alloc = state["next"], state["page"], state["used"], state["allocations"]
        page_end = self.data_start + page * self.page_size + used if page >= 0 else 0
        alloc = self._side("alloc")
        if not (self.partial.is_file() and alloc.is_file()
                and self.partial.stat().st_size >= max(page_end, self.metadata_start + n * self.metadata_type.itemsize)
                and alloc.stat().st_size >= n_alloc * ALLOC_TABLE_TYPE.itemsize):
            return False
        self._fd = os.open(self.partial, os.O_RDWR)
        if page >= 0:
            os.truncate(self.partial, page_end)  # pages written after the checkpoint are written again
            self.page_data[:used] = np.frombuffer(os.pread(self._fd, used, page_end - used), "<u1")
        rows = os.pread(self._fd, n * self.metadata_type.itemsize, self.metadata_start)
        self.metadata[:n] = np.frombuffer(rows, self.metadata_type)
        with open(alloc, "r+b") as f:
            f.truncate(n_alloc * ALLOC_TABLE_TYPE.itemsize)
            table = np.frombuffer(f.read(), ALLOC_TABLE_TYPE)
        self.allocations = [tuple(int(x) for x in r) for r in table]
        self.next, self.page, self.used = n, page, used
        self._saved = (n, n_alloc)
        return True

    # --- writing -----------------------------------------------------------------------------------

    def _flush_page(self) -> None:
        # the whole page, trailing zeros included, as ffcv.memory_allocator.MemoryAllocator writes it
        os.pwrite(self._fd, self.page_data.tobytes(), self.data_start + self.page * self.page_size)

    def _malloc(self, sample: int, size: int) -> tuple[int, np.ndarray]:
        """MemoryAllocator.malloc for one process: a new page when this one has no room left."""
        if size > self.page_size:
            raise ValueError(f"sample {sample} needs {size} bytes, more than a page ({self.page_size} bytes)")
        if self.page < 0 or size > self.page_size - self.used:
            if self.page >= 0:
                self._flush_page()
            self.page += 1
            self.used = 0
            self.page_data.fill(0)
        start, self.used = self.used, self.used + size
        ptr = self.data_start + self.page * self.page_size + start
        self.allocations.append((sample, ptr, size))
        return ptr, self.page_data[start:self.used]

    def append(self, sample: EncodedSample) -> None:
        """Place the next sample (index `self.next`)."""
        i = self.next
        row = sample.row.copy()
        if sample.data is not None:
            ptr, room = self._malloc(i, sample.data.nbytes)
            room[:] = sample.data
            for name in row.dtype.names:
                for key in row[name].dtype.names or ():
                    if key in _POINTER_KEYS and int(row[name][key][0]) == _UNPLACED:
                        row[name][key] = ptr
        self.metadata[i] = row[0]
        self.next = i + 1

    def checkpoint(self) -> None:
        """Make the samples appended so far survive a kill (see the module docstring)."""
        rows_done, alloc_done = self._saved
        rows = self.metadata[rows_done:self.next].tobytes()
        os.pwrite(self._fd, rows, self.metadata_start + rows_done * self.metadata_type.itemsize)
        if self.page >= 0:
            os.pwrite(self._fd, self.page_data[:self.used].tobytes(), self.data_start + self.page * self.page_size)
        with open(self._side("alloc"), "ab") as f:
            f.write(np.array(self.allocations[alloc_done:], dtype=ALLOC_TABLE_TYPE).tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.fsync(self._fd)
        self._write_state()
        self._saved = (self.next, len(self.allocations))

    def finish(self) -> None:
        """Write what ffcv.writer.DatasetWriter.finalize writes and move the beton to `path`."""
        if self.complete:
            return
        if self.next != self.num_samples:
            raise ValueError(f"{self.path}: {self.next} of {self.num_samples} samples appended")
        if self.page >= 0:
            self._flush_page()
        os.pwrite(self._fd, self.metadata.tobytes(), self.metadata_start)
        end = self.data_start + (self.page + 1) * self.page_size if self.page >= 0 else \
            self.metadata_start + self.metadata.nbytes
        os.ftruncate(self._fd, end)
        os.pwrite(self._fd, np.array(self.allocations, dtype=ALLOC_TABLE_TYPE).tobytes(), end)
        header = np.frombuffer(os.pread(self._fd, HeaderType.itemsize, 0), HeaderType).copy()
        header["alloc_table_ptr"] = end
        os.pwrite(self._fd, header.tobytes(), 0)
        os.fsync(self._fd)
        self.close()
        os.replace(self.partial, self.path)
        self._side("alloc").unlink(missing_ok=True)
        self.complete = True
        self._write_state()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
