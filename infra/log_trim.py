"""What the log keeper may delete from the embedded broker: a pure decision over a partition's batch objects."""

from __future__ import annotations

from collections.abc import Sequence


def batches_to_delete(bases: Sequence[int], safe_end: int, keep: int) -> list[int]:
    """The base offsets of the record-batch objects to delete from one partition.

    `bases` are the base offsets of the partition's batch objects (Tansu names each object by the offset of its
    first record); a batch ends where the next one begins. A batch may go when every record in it lies below
    `safe_end` (archived, or decided and committed) and it is not one of the newest `keep`. The newest batch always
    stays: its end is not known from the listing, and it carries the partition's last offset.
    """
    ordered = sorted(bases)
    deletable = max(0, len(ordered) - max(keep, 1))
    out: list[int] = []
    for index in range(deletable):
        if ordered[index + 1] > safe_end:
            break
        out.append(ordered[index])
    return out


def should_trim(batches: int, keep: int) -> bool:
    """Trim a partition once it holds twice the batches it keeps: each trim then removes at least `keep` objects."""
    return batches > 2 * max(keep, 1)
