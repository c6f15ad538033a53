"""Reads an ingest stage's Parquet files with pyarrow, polars and DuckDB, unchanged.

Run by `cargo xtask ci` after the smoke pipeline: python3 tests/parquet_readers.py <run>/ingest
It checks that each reader sees the same rows and the documented schema, and that the stored
images decode as PNG squares of the stated size.
"""
import json
import sys
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.parquet as pq

stage = Path(sys.argv[1])
manifest = json.loads((stage / "manifest.json").read_text())
records = stage / "records.parquet"

table = pq.read_table(records)
expected = ["image_id", "split", "file_name", "width", "height", "captions", "dialog",
            "dialog_caption", "visdial_source"]
assert table.column_names == expected, table.column_names
assert table.schema.metadata[b"chatpainter.table"] == b"records"
rows = table.num_rows
assert rows > 0
assert rows == next(o["rows"] for o in manifest["outputs"] if o["path"] == "records.parquet")

df = pl.read_parquet(records)
assert df.height == rows
assert df["captions"].list.len().min() >= 1
turns = df.filter(pl.col("split") == "train")["dialog"].list.len()
assert turns.min() >= 1, turns

con = duckdb.connect()
n, = con.execute(f"select count(*) from read_parquet('{records}')").fetchone()
assert n == rows
q, = con.execute(
    f"select dialog[1].question from read_parquet('{records}') where split = 'train' limit 1"
).fetchone()
assert q.endswith("?"), q

checked = 0
for size, splits in manifest["summary"]["image_tables"].items():
    for split, parts in splits.items():
        for part in parts:
            t = pq.read_table(stage / part)
            assert t.column_names == ["image_id", "png"], t.column_names
            assert t.schema.metadata[b"chatpainter.image_size"] == size.encode()
            png = t.column("png")[0].as_py()
            assert png[:8] == b"\x89PNG\r\n\x1a\n"
            w = int.from_bytes(png[16:20], "big")
            h = int.from_bytes(png[20:24], "big")
            assert (w, h) == (int(size), int(size)), (w, h, size)
            m, = con.execute(f"select count(*) from read_parquet('{stage / part}')").fetchone()
            assert m == t.num_rows
            checked += 1

issues = pl.read_parquet(stage / "issues.parquet")
print(f"parquet readers: pyarrow, polars and duckdb read {rows} records, "
      f"{checked} image tables and {issues.height} issue rows identically")
