"""Benchmark: the seed's pandas loop, a plain polars query and DuckDB vs the `events` stage.

All read the same synthetic `events_*.csv` files (10M rows by default), extract product ids
with the regex `[a-zA-Z0-9]{3,}`, explode multi-id cells, keep the events and buttons of
interest and write the result. `polars_same_job` and `duckdb_same_job` are the stage's whole
job (timestamps, verdicts, repeats, quarantine, id counts) as one plain polars query and as
plain DuckDB SQL: the peers that do what we do, whose events are checked equal to ours.
Each engine runs in its own child process so its peak RSS is its own (`ru_maxrss` of the
child). Writes `bench/results/events.json`.

    python bench/events.py [--rows 10000000] [--data /tmp/fashion-recs-bench-events]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

from machine import machine, now, write_report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "events.json"
PATTERN = r"[a-zA-Z0-9]{3,}"
ENGINES = (
    "seed_loop",
    "polars_peer",
    "duckdb_peer",
    "polars_same_job",
    "duckdb_same_job",
    "ours",
    "ours_blocks",
)
AS_OF = date(2026, 11, 1)
CONTROL = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]"


def seed_loop(files: list[Path], out: Path, events: list[str], buttons: list[str]) -> int:
    """The seed's approach, as its report describes it, under current pandas."""
    import pandas as pd

    frames = []
    for path in files:
        for chunk in pd.read_csv(path, chunksize=100_000, dtype=str, keep_default_na=False):
            chunk["product_id_cleaned"] = chunk["product_id"].str.findall(PATTERN)
            chunk["product_id_cleaned2"] = chunk["related_product_ids"].str.findall(PATTERN)
            chunk = chunk.explode("product_id_cleaned").explode("product_id_cleaned2")
            keep = chunk["event_name"].isin(events) | chunk["button_name"].isin(buttons)
            frames.append(chunk[keep])
    all_df_filtered = pd.concat(frames, ignore_index=True)
    ids = pd.concat([all_df_filtered["product_id_cleaned"], all_df_filtered["product_id_cleaned2"]])
    cleaned_product_ids = ids.dropna().drop_duplicates()
    all_df_filtered.to_parquet(out / "all_df_filtered.parquet")
    cleaned_product_ids.to_frame("product_id").to_parquet(out / "cleaned_product_ids.parquet")
    return len(all_df_filtered)


def polars_peer(files: list[Path], out: Path, events: list[str], buttons: list[str]) -> int:
    """The seed's logic as a plain polars lazy streaming query: the peer to beat."""
    import polars as pl

    frame = (
        pl.scan_csv([str(f) for f in files], infer_schema=False)
        .filter(pl.col("event_name").is_in(events) | pl.col("button_name").is_in(buttons))
        .with_columns(
            pl.col("product_id").str.extract_all(PATTERN).alias("product_id_cleaned"),
            pl.col("related_product_ids").str.extract_all(PATTERN).alias("product_id_cleaned2"),
        )
        .explode("product_id_cleaned")
        .explode("product_id_cleaned2")
    )
    target = out / "all_df_filtered.parquet"
    frame.sink_parquet(target)
    ids = pl.scan_parquet(target)
    unique = (
        pl.concat(
            [
                ids.select(pl.col("product_id_cleaned").alias("product_id")),
                ids.select(pl.col("product_id_cleaned2").alias("product_id")),
            ]
        )
        .drop_nulls()
        .unique()
    )
    unique.sink_parquet(out / "cleaned_product_ids.parquet")
    return pl.scan_parquet(target).select(pl.len()).collect().item()


def duckdb_peer(files: list[Path], out: Path, events: list[str], buttons: list[str]) -> int:
    """The same query in DuckDB: `regexp_extract_all` + `unnest`, `COPY` to Parquet."""
    import duckdb

    con = duckdb.connect()
    listed = ", ".join(f"'{f}'" for f in files)
    target = out / "all_df_filtered.parquet"
    con.execute(
        f"""
        COPY (
          WITH kept AS (
            SELECT *,
              regexp_extract_all(product_id, '{PATTERN}') AS a,
              regexp_extract_all(related_product_ids, '{PATTERN}') AS b
            FROM read_csv([{listed}], all_varchar = true, header = true)
            WHERE event_name IN ({", ".join(f"'{e}'" for e in events)})
               OR button_name IN ({", ".join(f"'{b}'" for b in buttons)})
          ), one AS (
            SELECT * EXCLUDE (a, b), b,
              unnest(CASE WHEN coalesce(len(a), 0) = 0 THEN [NULL] ELSE a END) AS product_id_cleaned
            FROM kept
          )
          SELECT * EXCLUDE (b),
            unnest(CASE WHEN coalesce(len(b), 0) = 0 THEN [NULL] ELSE b END) AS product_id_cleaned2
          FROM one
        ) TO '{target}' (FORMAT parquet)
        """
    )
    con.execute(
        f"""
        COPY (
          SELECT DISTINCT product_id FROM (
            SELECT product_id_cleaned AS product_id FROM '{target}'
            UNION ALL SELECT product_id_cleaned2 FROM '{target}'
          ) WHERE product_id IS NOT NULL
        ) TO '{out / "cleaned_product_ids.parquet"}' (FORMAT parquet)
        """
    )
    return con.execute(f"SELECT count(*) FROM '{target}'").fetchone()[0]


def polars_same_job(files: list[Path], out: Path, data_dir: Path) -> int:
    """Our stage's job written as one plain polars streaming query, as a data engineer
    would: rows of interest, timestamps parsed and checked against the as-of window,
    verdicts (missing user, control characters, bad or implausible time, after as-of, no
    id, no catalogue id), exact repeats of a kept row filtered, one event per catalogue id
    of a kept row, the rejected rows quarantined, the verdicts counted and every mentioned
    id counted, into four Parquet files from one pass over the files. It leaves out what
    the stage adds on top (the reader's own checks and per-row line numbers, progress)."""
    from datetime import timedelta

    import polars as pl
    import pyarrow.parquet as pq

    from fashion_recs.clock import as_of_timestamp
    from fashion_recs.config import load_config

    cfg = load_config().events
    catalogue = pq.read_table(data_dir / "truth" / "popular.parquet", columns=["product_id"])
    known = pl.Series(sorted(set(catalogue.column("product_id").to_pylist()))).implode()
    as_of = as_of_timestamp(AS_OF)
    earliest = as_of - timedelta(days=cfg.max_days_before_as_of)
    latest = as_of + timedelta(days=cfg.max_days_after_as_of)
    raw = ["user_id", "event_name", "button_name", "event_timestamp", "product_id",
           "related_product_ids"]  # fmt: skip
    scan = pl.concat(
        [
            pl.scan_csv(f, infer_schema=False)
            .with_row_index("source_row")
            .with_columns(pl.lit(str(f)).alias("source_file"))
            for f in files
        ]
    )
    ts = pl.coalesce(
        pl.col("event_timestamp").str.strptime(pl.Datetime("us"), f, strict=False)
        for f in cfg.timestamp_formats
    ).dt.replace_time_zone("UTC")
    ids = [
        pl.col(c).str.to_lowercase().str.extract_all(cfg.id_pattern).fill_null([])
        for c in ("product_id", "related_product_ids")
    ]
    in_catalogue = [pl.col(c).list.eval(pl.element().is_in(known)).list.any() for c in "ab"]
    rows = (
        scan.filter(
            pl.col("event_name").is_in(cfg.events_of_interest)
            | pl.col("button_name").is_in(cfg.buttons_of_interest)
        )
        .with_columns(
            pl.col("user_id").str.strip_chars().fill_null("").alias("user"),
            ts.alias("event_ts"),
            ids[0].alias("a"),
            ids[1].alias("b"),
            pl.struct(raw).hash(7).alias("h"),
        )
        .with_columns(
            pl.when(pl.col("user") == "")
            .then(pl.lit("missing_user_id"))
            .when(pl.col("user").str.contains(CONTROL))
            .then(pl.lit("control_characters"))
            .when(pl.col("event_ts").is_null())
            .then(pl.lit("bad_timestamp"))
            .when((pl.col("event_ts") < earliest) | (pl.col("event_ts") > latest))
            .then(pl.lit("implausible_timestamp"))
            .when(pl.col("event_ts") > as_of)
            .then(pl.lit("after_as_of"))
            .when(pl.col("a").list.len() + pl.col("b").list.len() == 0)
            .then(pl.lit("no_product_id"))
            .when(~(in_catalogue[0] | in_catalogue[1]))
            .then(pl.lit("unknown_product_id"))
            .alias("reason")
        )
        .with_columns(
            pl.when(pl.col("reason").is_null() & ~pl.col("h").is_first_distinct())
            .then(pl.lit("duplicate_event"))
            .otherwise("reason")
            .alias("reason")
        )
    )
    kept = (
        rows.filter(pl.col("reason").is_null())
        .with_columns(pl.col("a").list.unique(maintain_order=True))
        .with_columns(pl.col("b").list.set_difference("a"))
    )
    facts = [
        pl.col("user").alias("user_id"),
        "event_name",
        pl.col("button_name").replace("", None),
        "event_ts",
    ]
    events = pl.concat(
        [
            kept.select(*facts, pl.col(c).alias("product_id"), pl.lit(slot).alias("product_slot"))
            .explode("product_id")
            .filter(pl.col("product_id").is_in(known))
            for c, slot in (("a", "product_id_cleaned"), ("b", "product_id_cleaned2"))
        ]
    )
    quarantine = rows.filter(
        pl.col("reason").is_not_null() & ~pl.col("reason").is_in(["after_as_of", "duplicate_event"])
    ).select("reason", "source_file", "source_row", *raw)
    # A row counts once for each id it mentions, in either cell.
    mentioned = (
        rows.select(pl.concat_list("a", "b").list.unique().alias("product_id"))
        .explode("product_id")
        .drop_nulls()
        .group_by("product_id")
        .len("n_events")
    )
    pl.collect_all(
        [
            events.sink_parquet(out / "events.parquet", lazy=True),
            quarantine.sink_parquet(out / "quarantine.parquet", lazy=True),
            rows.group_by("reason").len().sink_parquet(out / "verdicts.parquet", lazy=True),
            mentioned.sink_parquet(out / "event_product_ids.parquet", lazy=True),
        ],
        engine="streaming",
    )
    return pq.read_metadata(out / "events.parquet").num_rows


def duckdb_same_job(files: list[Path], out: Path, data_dir: Path) -> int:
    """The stage's job as plain DuckDB SQL, as a data engineer would write it: the same
    events (in file, row, slot, cell order), quarantined rows, verdict counts and per-id
    counts as `polars_same_job` and the stage (equal on these files). Rows are numbered per
    file, ids unnested with their place in the cell, a row's repeated id dropped, the
    catalogue joined, repeats found by a window over the raw columns' hash."""
    from datetime import timedelta

    import duckdb
    import pyarrow.parquet as pq

    from fashion_recs.clock import as_of_timestamp
    from fashion_recs.config import load_config

    cfg = load_config().events
    catalogue = pq.read_table(data_dir / "truth" / "popular.parquet", columns=["product_id"])
    as_of = as_of_timestamp(AS_OF).replace(tzinfo=None)
    earliest = as_of - timedelta(days=cfg.max_days_before_as_of)
    latest = as_of + timedelta(days=cfg.max_days_after_as_of)

    def listed(values: list[str]) -> str:
        return ", ".join("'" + v.replace("'", "''") + "'" for v in values)

    def stamp(value: object) -> str:
        return f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S.%f}'"

    # chrono's optional fraction `%.f` is DuckDB's `.%f`.
    formats = [f.replace("%.f", ".%f") for f in cfg.timestamp_formats]
    parsed = ", ".join(f"try_strptime(event_timestamp, '{f}')" for f in formats)
    scans = " UNION ALL ".join(
        f"SELECT {i} AS file, row_number() OVER () - 1 AS source_row, * "
        f"FROM read_csv('{f}', all_varchar = true, header = true, null_padding = true)"
        for i, f in enumerate(files)
    )
    pattern = cfg.id_pattern
    con = duckdb.connect()
    con.register("catalogue_ids", catalogue)
    con.execute("CREATE TEMP TABLE catalogue AS SELECT DISTINCT product_id FROM catalogue_ids")
    con.execute(
        f"""
        CREATE TEMP TABLE rows AS
        SELECT file, source_row, user_id, event_name, button_name, event_timestamp,
          product_id, related_product_ids,
          trim(coalesce(user_id, '')) AS usr, coalesce({parsed}) AS ts,
          regexp_extract_all(lower(coalesce(product_id, '')), '{pattern}') AS a,
          regexp_extract_all(lower(coalesce(related_product_ids, '')), '{pattern}') AS b,
          hash(user_id, event_name, button_name, event_timestamp, product_id,
               related_product_ids) AS h
        FROM ({scans})
        WHERE event_name IN ({listed(cfg.events_of_interest)})
           OR button_name IN ({listed(cfg.buttons_of_interest)})
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE ids AS
        WITH cells AS (
          SELECT file, source_row, 0 AS slot, unnest(a) AS product_id,
            generate_subscripts(a, 1) AS pos FROM rows
          UNION ALL
          SELECT file, source_row, 1, unnest(b), generate_subscripts(b, 1) FROM rows
        )
        SELECT c.file, c.source_row, c.slot, c.pos, c.product_id,
          k.product_id IS NOT NULL AS known
        FROM cells c LEFT JOIN catalogue k USING (product_id)
        QUALIFY row_number() OVER (
          PARTITION BY c.file, c.source_row, c.product_id ORDER BY c.slot, c.pos) = 1
        """
    )
    con.execute(
        f"""
        CREATE TEMP TABLE verdict AS
        WITH known_rows AS (SELECT DISTINCT file, source_row FROM ids WHERE known),
        first AS (
          SELECT r.file, r.source_row, r.h, CASE
            WHEN usr = '' THEN 'missing_user_id'
            WHEN regexp_matches(usr, '{CONTROL}') THEN 'control_characters'
            WHEN ts IS NULL THEN 'bad_timestamp'
            WHEN ts < {stamp(earliest)} OR ts > {stamp(latest)} THEN 'implausible_timestamp'
            WHEN ts > {stamp(as_of)} THEN 'after_as_of'
            WHEN len(a) + len(b) = 0 THEN 'no_product_id'
            WHEN k.source_row IS NULL THEN 'unknown_product_id'
          END AS reason
          FROM rows r LEFT JOIN known_rows k USING (file, source_row)
        )
        SELECT file, source_row, CASE WHEN reason IS NULL AND row_number() OVER (
            PARTITION BY h, reason IS NULL ORDER BY file, source_row) > 1
          THEN 'duplicate_event' ELSE reason END AS reason
        FROM first
        """
    )
    con.execute(
        f"""
        COPY (
          SELECT r.usr AS user_id, r.event_name, nullif(r.button_name, '') AS button_name,
            r.ts AS event_ts, i.product_id,
            CASE i.slot WHEN 0 THEN 'product_id_cleaned' ELSE 'product_id_cleaned2' END
              AS product_slot
          FROM ids i JOIN verdict v USING (file, source_row) JOIN rows r USING (file, source_row)
          WHERE v.reason IS NULL AND i.known
          ORDER BY i.file, i.source_row, i.slot, i.pos
        ) TO '{out / "events.parquet"}' (FORMAT parquet)
        """
    )
    con.execute(
        f"""
        COPY (
          SELECT v.reason, r.file, r.source_row, r.user_id, r.event_name, r.button_name,
            r.event_timestamp, r.product_id, r.related_product_ids
          FROM rows r JOIN verdict v USING (file, source_row)
          WHERE v.reason NOT IN ('after_as_of', 'duplicate_event')
        ) TO '{out / "quarantine.parquet"}' (FORMAT parquet)
        """
    )
    con.execute(
        f"COPY (SELECT reason, count(*) AS n FROM verdict GROUP BY reason) "
        f"TO '{out / 'verdicts.parquet'}' (FORMAT parquet)"
    )
    con.execute(
        f"COPY (SELECT product_id, count(*) AS n_events FROM ids GROUP BY product_id) "
        f"TO '{out / 'event_product_ids.parquet'}' (FORMAT parquet)"
    )
    return pq.read_metadata(out / "events.parquet").num_rows


def ours(files: list[Path], out: Path, data_dir: Path, reader: str = "auto") -> int:
    """The `events` stage with the default config: the streaming reader for these files
    (`ours`), or every file through the block reader, chunk size 100,000 (`ours_blocks`),
    which is what a file the CSV reader cannot read line by line gets."""
    import pyarrow.parquet as pq

    from fashion_recs.artifacts import RunPaths
    from fashion_recs.config import load_config
    from fashion_recs.contract import EVENTS
    from fashion_recs.stages.events import build_events

    overrides = {
        "data_root": str(out),
        "quality": {"max_reject_rate": {"events": 1.0}},
        "events": {"reader": reader},
    }
    config = load_config(None, overrides)
    truth = pq.read_table(data_dir / "truth" / "popular.parquet", columns=["product_id"])
    catalogue = truth.column("product_id").to_pylist()
    paths = RunPaths(config.data_root_path, config.retailer, "bench")
    build_events(config, paths, files, catalogue, AS_OF)
    return pq.read_metadata(paths.path(EVENTS)).num_rows


# What each engine imports, loaded before its clock starts: the figures are the work, not
# the libraries' import time (0.2 s for polars, 0.6 s for the stage's modules).
IMPORTS = {
    "seed_loop": ["pandas", "pyarrow.parquet"],
    "polars_peer": ["polars"],
    "duckdb_peer": ["duckdb"],
    "polars_same_job": ["polars", "pyarrow.parquet", "fashion_recs.clock"],
    "duckdb_same_job": ["duckdb", "pyarrow.parquet", "fashion_recs.clock"],
    "ours": ["fashion_recs.artifacts", "fashion_recs.contract", "fashion_recs.stages.events"],
}
IMPORTS["ours_blocks"] = IMPORTS["ours"]


def child(engine: str, data_dir: Path, out: Path) -> None:
    """Run one engine and print its figures as JSON (peak RSS is this process's own)."""
    import importlib

    from fashion_recs.config import load_config
    from fashion_recs.memory import peak_rss_mib

    for module in IMPORTS[engine]:
        importlib.import_module(module)
    files = sorted(data_dir.glob("events_*.csv"))
    cfg = load_config().events
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if engine == "seed_loop":
        rows_out = seed_loop(files, out, cfg.events_of_interest, cfg.buttons_of_interest)
    elif engine == "polars_peer":
        rows_out = polars_peer(files, out, cfg.events_of_interest, cfg.buttons_of_interest)
    elif engine == "duckdb_peer":
        rows_out = duckdb_peer(files, out, cfg.events_of_interest, cfg.buttons_of_interest)
    elif engine == "polars_same_job":
        rows_out = polars_same_job(files, out, data_dir)
    elif engine == "duckdb_same_job":
        rows_out = duckdb_same_job(files, out, data_dir)
    else:
        rows_out = ours(files, out, data_dir, "blocks" if engine == "ours_blocks" else "auto")
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rows_out": rows_out, "peak_rss_mib": peak_rss_mib()}))


def same_events(out: Path) -> dict[str, dict[str, bool]]:
    """Whether each same-job peer wrote our events: the same rows, and in our order (file,
    row, slot, cell), which `polars_same_job` does not keep. The time's zone aside, which
    DuckDB leaves off."""
    import polars as pl

    written = (out / "ours").glob("runs/*/*/02_intermediate/events.parquet")
    ours_events = pl.read_parquet(next(written))
    columns = ours_events.columns
    equal = {}
    for engine in ("polars_same_job", "duckdb_same_job"):
        theirs = pl.read_parquet(out / engine / "events.parquet").select(columns)
        theirs = theirs.with_columns(
            pl.col("event_ts").dt.replace_time_zone(None).dt.replace_time_zone("UTC")
        )
        equal[engine] = {
            "same_rows": theirs.sort(columns).equals(ours_events.sort(columns)),
            "same_order": theirs.equals(ours_events),
        }
    return equal


def run_child(engine: str, data_dir: Path, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", engine, "--data", str(data_dir), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def count_rows(files: list[Path]) -> int:
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            blocks = iter(lambda h=handle: h.read(1 << 24), b"")
            total += sum(block.count(b"\n") for block in blocks)
        total -= 1  # header
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--data", type=Path, default=Path("/tmp/fashion-recs-bench-events"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/fashion-recs-bench-events-out"))
    parser.add_argument("--child", choices=ENGINES)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.out / args.child)
        return

    from fashion_recs.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(n_events=args.rows, images=False, end_date=AS_OF)
    if not (args.data / "truth" / "summary.json").exists():
        print(f"generating {args.rows:,} event rows in {args.data} ...", flush=True)
        generate(spec, args.data)
    files = sorted(args.data.glob("events_*.csv"))
    rows = count_rows(files)
    size_mib = sum(f.stat().st_size for f in files) / 2**20
    print(f"{rows:,} rows, {size_mib:.0f} MiB in {len(files)} files", flush=True)

    results = {}
    for engine in ENGINES:
        print(f"running {engine} ...", flush=True)
        figures = run_child(engine, args.data, args.out)
        figures["rows_per_s"] = rows / figures["seconds"]
        results[engine] = figures
        print(f"  {engine}: {figures['seconds']:.1f} s, {figures['rows_per_s']:,.0f} rows/s, "
              f"peak RSS {figures['peak_rss_mib']:,.0f} MiB", flush=True)  # fmt: skip

    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow as pa

    equal = same_events(args.out)
    print(f"  same events as ours: {equal}", flush=True)
    speedup = results["ours"]["rows_per_s"] / results["seed_loop"]["rows_per_s"]
    report = {
        "summary": {
            "rows": rows,
            "speedup_vs_seed_loop": round(speedup, 2),
            "speedup_vs_polars_peer": round(
                results["polars_peer"]["seconds"] / results["ours"]["seconds"], 2
            ),
            "speedup_vs_duckdb_peer": round(
                results["duckdb_peer"]["seconds"] / results["ours"]["seconds"], 2
            ),
            "speedup_vs_polars_same_job": round(
                results["polars_same_job"]["seconds"] / results["ours"]["seconds"], 2
            ),
            "speedup_vs_duckdb_same_job": round(
                results["duckdb_same_job"]["seconds"] / results["ours"]["seconds"], 2
            ),
            "same_job_events_equal": equal,
            "peak_rss_mib": round(results["ours"]["peak_rss_mib"], 1),
            "block_reader_seconds": round(results["ours_blocks"]["seconds"], 2),
            "seed_loop_peak_rss_mib": round(results["seed_loop"]["peak_rss_mib"], 1),
            "rows_per_s": round(results["ours"]["rows_per_s"]),
            "seed_loop_rows_per_s": round(results["seed_loop"]["rows_per_s"]),
        },
        "engines": results,
        "parameters": {
            "rows": rows,
            "input_mib": round(size_mib, 1),
            "files": len(files),
            "chunk_size": 100_000,
            "pattern": PATTERN,
            "note": "seed_loop and both peers explode both product columns as the report "
            "does (a cross product when both hold ids); ours writes one row per extracted id "
            "and also parses timestamps, keeps accounting, quarantines and counts; "
            "ours_blocks forces the block reader (events.reader: blocks); polars_same_job "
            "and duckdb_same_job do the stage's job in one plain polars query and in plain "
            "DuckDB SQL (same events, verdicts and id counts); each engine's libraries are "
            "imported before its clock starts",
        },
        "machine": machine(),
        "versions": {
            "pandas": pd.__version__,
            "polars": pl.__version__,
            "pyarrow": pa.__version__,
            "duckdb": duckdb.__version__,
        },
        "measured_at": now(),
    }
    write_report(RESULTS, report)


if __name__ == "__main__":
    main()
