#!/usr/bin/env python3
"""Test inputs in the seed formats, made from the recorded real data or from generated files.

  fixtures.py klines OUT.jsonl CSV...        Binance klines CSV -> `binance` message values
  fixtures.py frames OUT.jsonl FRAMES.jsonl  Polymarket recording -> one websocket frame per line
  fixtures.py garble IN OUT --topic T --seed N
        copy IN to OUT with bounded disorder, garbage lines and late replays mixed in

One message value per output line, as `speed-layer run --input TOPIC=PATH` reads them.
"""
import csv
import datetime as dt
import json
import random
from decimal import Decimal
import sys

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def ms(text):
    return (dt.datetime.fromisoformat(text) - EPOCH) // dt.timedelta(milliseconds=1)


def java(x):
    """A double printed the way Java does: a fraction always, exponent at >=1e7 or <1e-3."""
    x = float(x)
    if x == 0:
        return "0.0"
    if 1e-3 <= abs(x) < 1e7:
        s = repr(x)
        return s if "." in s else s + ".0"
    sign, digits, exp = Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, digits)).rstrip("0") or "0"
    exponent = len(Decimal(repr(abs(x))).as_tuple().digits) - 1 + Decimal(repr(abs(x))).as_tuple().exponent
    return "%s%s.%sE%d" % ("-" if sign else "", digits[0], digits[1:] or "0", exponent)


def kline_row(r, i):
    close_ms = ms(r["close_time"])
    fields = [
        ("snapshot_time", str(close_ms)),
        ("timestamp", str(ms(r["open_time"]) * 1_000_000)),
        ("symbol", json.dumps(r["symbol"])),
        ("open", java(r["open"])), ("high", java(r["high"])), ("low", java(r["low"])),
        ("close", java(r["close"])), ("volume", java(r["volume"])), ("close_time", str(close_ms)),
        ("quote_asset_volume", java(r["qav"])), ("trades", r["num_trades"]),
        ("taker_buy_base", java(r["taker_base"])), ("taker_buy_quote", java(r["taker_quote"])),
        ("is_closed", "true"), ("date", json.dumps(r["open_time"][:10])), ("__index_level_0__", str(i)),
    ]
    return "{" + ",".join('"%s":%s' % (k, v) for k, v in fields) + "}"


def klines(out, csvs, seed=1):
    rng = random.Random(seed)
    with open(out, "w") as f:
        for path in csvs:
            rows = list(csv.DictReader(open(path)))
            i = 0
            while i < len(rows):
                n = rng.randint(1, 30)
                chunk = [kline_row(r, i + k) for k, r in enumerate(rows[i:i + n])]
                if len(chunk) == 1 and rng.random() < 0.5:
                    f.write(chunk[0] + "\n")  # a bare object is a one-row message
                else:
                    f.write("[" + ",".join(chunk) + "]\n")
                i += n


def frames(out, recording):
    with open(out, "w") as f:
        for line in open(recording):
            payload = json.loads(line)["payload"].rstrip("\r\n")
            assert "\n" not in payload
            f.write(payload + "\n")


GARBAGE = {
    "binance": [
        "not json at all",
        '{"symbol": "BTCUSDT", "close": 1.0}',
        '[{"snapshot_time": 1790000000000, "symbol": 5}]',
        '[{"snapshot_time": "1790000000000", "symbol": "ETHUSDT"}]',
        '[{"snapshot_time": 1790000000000, "symbol": "ETHUSDT", "close": "abc"}, 7]',
        "42",
        "[",
    ],
    "polymarket_trade": [
        "PONG",
        '{"event_type": "book", "timestamp": "1790000000000", "bids": [], "asks": []}',
        '{"event_type": "book", "market": "0xabc", "bids": []}',
        '{"event_type": "last_trade_price", "market": "0xabc", "timestamp": "soon", "size": "1"}',
        '{"event_type": "book", "market": "0xabc", "timestamp": "1790000000000", "bids": [{"price": "x", "size": "1"}]}',
        '[1, {"market": "0xabc"}]',
        '{"event_type": "last_trade_price", "market": "0xabc", "timestamp": "1790000000000", "size": "many"}',
    ],
}


def garble(src, out, topic, seed):
    rng = random.Random(seed)
    lines = [l.rstrip("\n") for l in open(src) if l.strip()]
    # Bounded disorder: swap neighbours now and then (a few seconds of event time).
    for i in range(1, len(lines)):
        if rng.random() < 0.05:
            lines[i - 1], lines[i] = lines[i], lines[i - 1]
    result = []
    for i, line in enumerate(lines):
        result.append(line)
        if rng.random() < 0.01:
            result.append(rng.choice(GARBAGE[topic]))
        if i > 400 and rng.random() < 0.005:
            result.append(lines[i - 400])  # a replay from long ago: late records
        if rng.random() < 0.002:
            result.append("")  # a blank line carries no message
    with open(out, "w") as f:
        f.write("\n".join(result) + "\n")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "klines":
        klines(sys.argv[2], sys.argv[3:])
    elif cmd == "frames":
        frames(sys.argv[2], sys.argv[3])
    elif cmd == "garble":
        args = sys.argv[2:]
        topic = args[args.index("--topic") + 1]
        seed = int(args[args.index("--seed") + 1])
        garble(args[0], args[1], topic, seed)
    else:
        sys.exit("unknown command " + cmd)
