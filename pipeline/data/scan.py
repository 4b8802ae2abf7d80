"""Listing and checking dataset folders: ImageNet (`<wnid>/*`) and ImageNet-V2 (`<index>/*`).

The class index is the sorted WNID order of train/, which must equal val/'s; V2 folders are
named by that index. Every file is tried once (in worker processes); the unreadable ones are
kept with their reason, never dropped silently.
"""
from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data.images import unreadable_reason
from pipeline.data.progress import progress_bar


class DataLayoutError(ValueError):
    """The dataset folders are not usable as they are; the message names the folders."""


@dataclass
class SplitScan:
    name: str
    root: str
    classes: list[str]  # class folder name per class index
    files: list[tuple[str, int]] = field(default_factory=list)  # readable (path, label)
    skipped: list[dict] = field(default_factory=list)  # {"path", "reason"}

    @property
    def total(self) -> int:
        return len(self.files) + len(self.skipped)

    def counts(self) -> dict[str, int]:
        """Readable images per class folder name (zeros included)."""
        out = {c: 0 for c in self.classes}
        for _, label in self.files:
            out[self.classes[label]] += 1
        return out


def _visible_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _files_of(folder: Path) -> list[Path]:
    # Every regular file counts, hidden ones and non-images included: they are listed as
    # skipped with a reason rather than ignored.
    return sorted(p for p in folder.iterdir() if p.is_file())


def imagenet_classes(split_dir: str | Path) -> list[str]:
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataLayoutError(f"{split_dir}: not a folder (expected an ImageNet split with one folder per WNID)")
    classes = [p.name for p in _visible_dirs(split_dir)]
    if not classes:
        raise DataLayoutError(f"{split_dir}: no class folders (expected {split_dir}/<wnid>/*.JPEG)")
    return classes


def check_same_classes(a_name: str, a: list[str], b_name: str, b: list[str]) -> None:
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if only_a or only_b:
        parts = []
        if only_a:
            parts.append(f"only in {a_name}: {_some(only_a)}")
        if only_b:
            parts.append(f"only in {b_name}: {_some(only_b)}")
        raise DataLayoutError(f"class folders differ between {a_name} and {b_name}; " + "; ".join(parts))


def source_classes(src) -> list[str]:
    """The class folders (WNIDs, index order) of `src` (pipeline.data.sources.Sources), train's and
    val's checked to be the same set: folders only, so seconds even at ImageNet scale (the
    conversion stage checks this before launching its job)."""
    classes = imagenet_classes(src.train)
    check_same_classes(f"{src.train}", classes, f"{src.val}", imagenet_classes(src.val))
    return classes


def _some(names: list[str], n: int = 20) -> str:
    head = ", ".join(str(x) for x in names[:n])
    return head + (f" ... and {len(names) - n} more" if len(names) > n else "") + f" ({len(names)} in all)"


def _raise_on_empty(empty: list[Path], split: str) -> None:
    if empty:
        raise DataLayoutError(f"{split}: empty class folder(s): {_some([str(p) for p in empty])}")


def list_imagenet_split(name: str, split_dir: str | Path, classes: list[str]) -> SplitScan:
    """Files of an ImageNet-layout split, labelled by position in `classes`."""
    split_dir = Path(split_dir)
    scan = SplitScan(name=name, root=str(split_dir), classes=list(classes))
    empty = []
    for label, wnid in enumerate(classes):
        files = _files_of(split_dir / wnid)
        if not files:
            empty.append(split_dir / wnid)
        scan.files += [(str(p), label) for p in files]
    _raise_on_empty(empty, name)
    scan.skipped += [{"path": str(p), "reason": "outside any class folder"} for p in _files_of(split_dir)]
    return scan


def list_v2_split(name: str, v2_dir: str | Path, classes: list[str]) -> SplitScan:
    """Files of an ImageNet-V2 folder: `<class index>/*`, the index into `classes`."""
    v2_dir = Path(v2_dir)
    if not v2_dir.is_dir():
        raise DataLayoutError(f"{v2_dir}: not a folder (expected ImageNet-V2 with one folder per class index)")
    dirs = _visible_dirs(v2_dir)
    not_index = [d.name for d in dirs if not d.name.isdigit()]
    if not_index:
        raise DataLayoutError(f"{v2_dir}: folder names must be class indices 0..{len(classes) - 1}; "
                              f"found {_some(sorted(not_index))}")
    check_same_classes(f"{v2_dir} (V2 class indices)", sorted(int(d.name) for d in dirs),
                       "the train class indices", list(range(len(classes))))
    scan = SplitScan(name=name, root=str(v2_dir), classes=list(classes))
    empty = []
    for d in sorted(dirs, key=lambda d: int(d.name)):
        files = _files_of(d)
        if not files:
            empty.append(d)
        scan.files += [(str(p), int(d.name)) for p in files]
    _raise_on_empty(empty, name)
    scan.skipped += [{"path": str(p), "reason": "outside any class folder"} for p in _files_of(v2_dir)]
    return scan


def drop_unreadable(scan: SplitScan, workers: int = 2) -> SplitScan:
    """Try every file once; move the unreadable ones to `scan.skipped` with their reason."""
    paths = [p for p, _ in scan.files]
    with progress_bar() as bar, ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        task = bar.add_task(f"checking {scan.name} images", total=len(paths))
        reasons = []
        for r in pool.map(unreadable_reason, paths, chunksize=64):
            reasons.append(r)
            bar.advance(task)
    kept = []
    for (path, label), reason in zip(scan.files, reasons):
        if reason is None:
            kept.append((path, label))
        else:
            scan.skipped.append({"path": path, "reason": reason})
    scan.files = kept
    scan.skipped.sort(key=lambda s: s["path"])
    return scan

