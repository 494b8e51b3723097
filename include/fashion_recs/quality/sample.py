"""What a quality check reads: the whole artifact, or a sample of it when it is large.

A check reads its artifact into pandas for Great Expectations, so its time and memory grow
with the artifact. Past `max_rows` rows (the events of a large retailer, any Spark dataset
of a cluster run) the check validates a sample of whole Parquet row groups instead, chosen
by a seeded shuffle (the same sample every time for the same files, so a rerun gives the
same result) and read in file order. Row groups, not scattered rows: a row group is read
in one piece, so the sample costs its own size, not the dataset's, and neighbouring rows
(the duplicates a stage would make) stay together. Row-level expectations (values in a set,
not null, in the catalogue) then hold for the sample's rows; the row count is the dataset's,
read from the Parquet footers, so the table-level limits are checked on the whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds


@dataclass(frozen=True)
class CheckFrame:
    """The rows a check validates and how many the artifact holds (`rows_total`)."""

    frame: pd.DataFrame
    rows_total: int

    @property
    def sampled(self) -> bool:
        return len(self.frame) < self.rows_total


def read_for_check(path: Path, max_rows: int, seed: int = 0) -> CheckFrame:
    """The artifact at `path` (a Parquet file or a dataset directory) as a data frame: all of
    it up to `max_rows` rows, else whole row groups in a seeded random order until at least
    `max_rows` rows, then cut to `max_rows`, in the order they lie in the files (the limit
    is the config's `quality.check_max_rows`)."""
    dataset = ds.dataset(path, format="parquet")
    groups = [
        (fragment, group.id, group.num_rows)
        for fragment in dataset.get_fragments()
        for group in fragment.row_groups
    ]
    total = sum(rows for _, _, rows in groups)
    if total <= max_rows:
        return CheckFrame(dataset.to_table().to_pandas(), total)
    order = np.random.default_rng(seed).permutation(len(groups))
    reach = np.cumsum([groups[i][2] for i in order])
    chosen = sorted(order[: int(np.searchsorted(reach, max_rows)) + 1])
    tables = [
        groups[i][0].subset(row_group_ids=[groups[i][1]]).to_table(schema=dataset.schema)
        for i in chosen
    ]
    sample = pa.concat_tables(tables).slice(0, max_rows)
    return CheckFrame(sample.to_pandas(), total)
