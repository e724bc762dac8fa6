#!/usr/bin/env python3
"""Test inputs in the seed formats, made from the recorded real data or from generated files.

  fixtures.py klines OUT.jsonl CSV...        Binance klines CSV -> `binance` message values
  fixtures.py frames OUT.jsonl FRAMES.jsonl  Polymarket recording -> one websocket frame per line
  fixtures.py garble IN OUT --topic T --seed N
        copy IN to OUT with bounded disorder, garbage lines and late replays mixed in
  fixtures.py hostile IN OUT --topic T --seed N
        copy IN to OUT with hostile records mixed in: odd Unicode and terminal escapes in keys,
        empty keys, event times in µs or past u64, NaN and overflowing numbers, invalid UTF-8,
        deep nesting

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


# {t}: an event time near the surrounding records; {us}: the same in microseconds.
HOSTILE = {
    "binance": [
        r'[{"snapshot_time":{t},"symbol":"a\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4","close":1.5,"quote_asset_volume":2.0,"taker_buy_quote":1.0}]',
        r'[{"snapshot_time":18446744073709551615,"symbol":"BTCUSDT","close":1.0}]',
        r'[{"snapshot_time":{us},"symbol":"BTCUSDT","close":1.0}]',
        r'[{"snapshot_time":{t},"symbol":"\u001b[2J\u001b]0;pwned\u0007EVIL\r\n","close":2.0}]',
        r'[{"snapshot_time":{t},"symbol":"","close":2.0}]',
        r'[{"snapshot_time":{t},"symbol":"BTCUSDT","close":"NaN"}]',
        r'[{"snapshot_time":{t},"symbol":"BTCUSDT","close":1e999}]',
        r'[{"snapshot_time":{t},"symbol":"BTCUSDT","close":NaN}]',
        r'[{"snapshot_time":{t},"symbol":"HUGE","close":1.7976931348623157e308,"quote_asset_volume":1.7976931348623157e308},'
        r'{"snapshot_time":{t},"symbol":"HUGE","close":-1.7976931348623157e308,"quote_asset_volume":1.7976931348623157e308}]',
        r'[{"snapshot_time":{t},"symbol":"TINY","close":1.0,"quote_asset_volume":5e-324,"taker_buy_quote":1e300}]',
        r'[{"snapshot_time":-5,"symbol":"BTCUSDT"}]',
        r'[{"snapshot_time":1.79e12,"symbol":"BTCUSDT"}]',
        r'[{"snapshot_time":{t},"symbol":"\u202eRTL \u6f22\u5b57 \ud83d\ude80","close":3.0}]',
        "[" * 5000 + "]" * 5000,
        b'[{"snapshot_time":{t},"symbol":"\xff\xfe"}]',
        r'[{"snapshot_time":{t},"symbol":"DUP","close":4.0,"symbol":"DUP2"}]',
        '\ufeff[{"snapshot_time":{t},"symbol":"BOM","close":4.0}]',
    ],
    "polymarket_trade": [
        r'{"event_type":"book","market":"","timestamp":"{t}","bids":[],"asks":[]}',
        r'{"event_type":"book","market":"0xabc\u001b[31m","timestamp":"{t}","bids":[{"price":"0.4","size":"10"}],"asks":[{"price":".6","size":"5"}]}',
        r'{"event_type":"book","market":"0xabc","timestamp":"{t}","bids":[{"price":"NaN","size":"1"}],"asks":[]}',
        r'{"event_type":"last_trade_price","market":"0xabc","timestamp":"{t}","size":"1e999"}',
        r'{"event_type":"last_trade_price","market":"0xabc","timestamp":"{us}","size":"1"}',
        r'{"event_type":"\u001b]0;x\u0007","market":"0xabc","timestamp":"{t}"}',
        r'{"event_type":"book","market":"0xbig","timestamp":"{t}","bids":[{"price":"1e308","size":"1"}],"asks":[{"price":"1.7e308","size":"1"}]}',
        r'{"event_type":"price_change","market":"0xabc","timestamp":"99999999999999999999"}',
        r'{"event_type":"price_change","market":"0xabc","timestamp":"{us}"}',
        r'{"event_type":"last_trade_price","market":"\u6f22\u5b57\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4\u00c4","timestamp":"{t}","size":"2.5"}',
        b'{"event_type":"book","market":"\xc3\x28","timestamp":"{t}"}',
        r'{"event_type":"last_trade_price","market":"0xdup","size":"3","market":"0xdup2","timestamp":"{t}"}',
    ],
}


def event_time(line, topic):
    try:
        v = json.loads(line)
    except ValueError:
        return None
    v = v[0] if isinstance(v, list) and v else v
    if not isinstance(v, dict):
        return None
    t = v.get("snapshot_time" if topic == "binance" else "timestamp")
    try:
        return int(t)
    except (TypeError, ValueError):
        return None


def hostile(src, out, topic, seed):
    rng = random.Random(seed)
    lines = [l.rstrip("\n").encode() for l in open(src) if l.strip()]
    result, t = [], None
    for line in lines:
        result.append(line)
        t = event_time(line, topic) or t
        if t is not None and rng.random() < 0.05:
            h = rng.choice(HOSTILE[topic])
            h = h if isinstance(h, bytes) else h.encode()
            result.append(h.replace(b"{t}", str(t).encode()).replace(b"{us}", str(t * 1000).encode()))
    with open(out, "wb") as f:
        f.write(b"\n".join(result) + b"\n")


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
    elif cmd in ("garble", "hostile"):
        args = sys.argv[2:]
        topic = args[args.index("--topic") + 1]
        seed = int(args[args.index("--seed") + 1])
        (garble if cmd == "garble" else hostile)(args[0], args[1], topic, seed)
    else:
        sys.exit("unknown command " + cmd)
