#!/usr/bin/env python3
"""Reads a speed-layer Parquet folder with pyarrow, as a batch-layer job would, and writes each
stream's rows as JSON lines in the shape of the JSON-lines output (`OUT/<stream>.jsonl`), so the
tests compare them with it. Every visible file is read on its own (a partial file fails here),
the schema of each stream must be the same in all its files, and window bounds must be UTC
timestamps.

usage: parquet_read.py DIR OUT
"""
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    summary = {}
    # A job killed before its sink opened has no folder yet: nothing visible.
    for stream in sorted(os.listdir(src)) if os.path.isdir(src) else []:
        folder = os.path.join(src, stream)
        if stream.startswith("_") or not os.path.isdir(folder):
            continue
        schema, rows, files = None, [], 0
        for date in sorted(os.listdir(folder)):
            assert date.startswith("date="), f"{stream}/{date}: not a date partition"
            for name in sorted(os.listdir(os.path.join(folder, date))):
                assert name.startswith("part-") and name.endswith(".parquet"), f"{stream}/{date}/{name}"
                table = pq.read_table(os.path.join(folder, date, name))
                files += 1
                if schema is None:
                    schema = table.schema
                assert table.schema.equals(schema), f"{stream}: schema differs in {date}/{name}"
                for row in table.to_pylist():
                    rows.append(row)
        if schema is None:
            continue  # a date folder made just before a crash, its file not yet moved in
        if stream != "dead_letter":
            for c in ("window_start", "window_end"):
                t = schema.field(c).type
                assert pa.types.is_timestamp(t) and t.tz == "UTC" and t.unit == "ms", f"{stream}.{c}: {t}"
        with open(os.path.join(out, stream + ".jsonl"), "w") as f:
            for row in rows:
                for k, v in list(row.items()):
                    if hasattr(v, "timestamp"):
                        row[k] = int(round(v.timestamp() * 1000))
                row.pop("row_key", None)
                if row.get("replaces") is None:
                    row.pop("replaces", None)
                f.write(json.dumps(row) + "\n")
        summary[stream] = {"files": files, "rows": len(rows),
                           "schema": [f"{x.name}:{x.type}" for x in schema]}
    json.dump(summary, sys.stdout)


if __name__ == "__main__":
    main()
