#!/usr/bin/env python3
"""Independent reference implementation of formats.md, for the integration tests.

Written from the contract alone (not from the Rust code): reads the same input files as
`speed-layer run --input ...` (one message value per line; each file is one partition, in the
order given), applies the per-partition lateness rule (the watermark before each message decides for all of
its records), the event-time bounds (--max-future against the wall clock) and computes every final window of the
output streams (the seed's three and polymarket_tokens) with exact arithmetic where it matters (math.fsum, statistics.stdev).

usage: reference.py --window-ms 60000 --lateness-ms 120000 --out DIR \
           [--binance FILE]... [--polymarket FILE]... [--metadata FILE]...
Writes DIR/{binance,polymarket_books,polymarket_trades,polymarket_tokens}.jsonl and DIR/summary.json
(counts of records, late and malformed per topic).
"""
import argparse
import bisect
import json
import math
import os
import re
import statistics
import time
from collections import defaultdict


class Malformed(Exception):
    pass


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


MAX_EVENT_TIME = 253402300799999  # 9999-12-31T23:59:59.999Z
NUMBER = re.compile(r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$")
DIGITS = re.compile(r"^\+?[0-9]+$")


# Rust's char::is_whitespace (Unicode White_Space), which differs from Python's str.strip().
RUST_WS = "".join(map(chr, [*range(0x9, 0xE), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B),
                            0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))


def finite(x):
    return not (math.isinf(x) or math.isnan(x))


def opt_num(obj, field):
    v = obj.get(field)
    if v is None:
        return None
    if not is_num(v) or not finite(float(v)):
        raise Malformed("wrong type for " + field)
    return float(v)


def lenient_num(v, what):
    """A number as JSON number or string; None stays None."""
    if v is None:
        return None
    if isinstance(v, str):
        if not NUMBER.match(v.strip()):
            raise Malformed(what)
        x = float(v.strip())
    elif is_num(v):
        x = float(v)
    else:
        raise Malformed(what)
    if math.isinf(x) or math.isnan(x):
        raise Malformed(what)
    return x


def parse_ms(v):
    """Epoch ms as an integer or a string of digits that fits 64 bits unsigned; else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str) and DIGITS.match(v.strip()):
        v = int(v.strip())
    if isinstance(v, int) and 0 <= v < 2 ** 64:
        return v
    return None


def no_constants(name):
    raise ValueError("not JSON: " + name)


def elements(line):
    try:
        v = json.loads(line, parse_constant=no_constants)
    except (ValueError, RecursionError):
        raise Malformed("invalid JSON")
    if isinstance(v, list):
        return v
    if isinstance(v, dict):
        return [v]
    raise Malformed("not an object or array")


def binance_records(value):
    """Yields ('rec', time, rec) / ('bad', reason) per row, in order."""
    try:
        rows = elements(value)
    except Malformed as e:
        yield ("bad", str(e))
        return
    for row in rows:
        try:
            if not isinstance(row, dict):
                raise Malformed("row is not an object")
            sym, ts = row.get("symbol"), row.get("snapshot_time")
            if sym is not None and not isinstance(sym, str):
                raise Malformed("wrong type for symbol")
            if ts is not None and (not isinstance(ts, int) or isinstance(ts, bool) or ts < 0):
                raise Malformed("wrong type for snapshot_time")
            close = opt_num(row, "close")
            qav = opt_num(row, "quote_asset_volume")
            tbq = opt_num(row, "taker_buy_quote")
            if sym is None:
                raise Malformed("missing symbol")
            if ts is None:
                raise Malformed("missing snapshot_time")
            if sym == "":
                raise Malformed("empty symbol")
            sentiment = tbq / qav if (tbq is not None and qav is not None and qav > 0) else None
            if sentiment is not None and not finite(sentiment):
                raise Malformed("value out of range")
        except (Malformed, OverflowError) as e:
            yield ("bad", str(e))
            continue
        yield ("rec", ts, ("binance", sym, {"price": close, "usdt_volume": qav, "sentiment": sentiment}))


def best(levels, pick):
    if levels is None:
        return None, None
    if not isinstance(levels, list):
        raise Malformed("invalid book level")
    best_p, best_s = None, None
    for lv in levels:
        if not isinstance(lv, dict):
            raise Malformed("invalid book level")
        p = lenient_num(lv.get("price"), "invalid book level")
        s = lenient_num(lv.get("size"), "invalid book level")
        if p is None:
            raise Malformed("invalid book level")
        if best_p is None or pick(p, best_p):
            best_p, best_s = p, s
    return best_p, best_s


def poly_records(value):
    """Yields ('rec', time, rec, tokens) / ('bad', reason) / ('ignored', time-or-None) per event;
    `rec` is the seed record (or None for a price_change), `tokens` the outcome-token events."""
    for line in value.split("\n"):
        line = line.rstrip("\r")
        if not line.strip(RUST_WS):
            continue
        try:
            events = elements(line)
        except Malformed as e:
            yield ("bad", str(e))
            continue
        for ev in events:
            yield poly_event(ev)


def token_num(v):
    """A token-only number (trade price, reported best price): unusable reads as missing."""
    try:
        return lenient_num(v, "x")
    except Malformed:
        return None


def token_levels(levels):
    """A book side as the token view keeps it: usable levels, size > 0, first per price."""
    out = {}
    for lv in levels or []:
        p, s = lenient_num(lv.get("price"), "x"), lenient_num(lv.get("size"), "x")
        if p is not None and s is not None and s > 0 and (p + 0.0) not in out:
            out[p + 0.0] = s
    return out


def price_change_tokens(ev, market):
    """formats.md "Outcome tokens": the entries of a price_change, per token, in order."""
    if ev.get("price_changes") is not None:
        entries, shared = ev["price_changes"], None
    elif ev.get("changes") is not None:
        entries, shared = ev["changes"], ev.get("asset_id")
        if not isinstance(shared, str) or shared == "":
            raise Malformed("invalid price change")
    else:
        raise Malformed("invalid price change")
    if not isinstance(entries, list):
        raise Malformed("invalid price change")
    per_token = {}
    for e in entries:
        if not isinstance(e, dict):
            raise Malformed("invalid price change")
        asset = shared if shared is not None else e.get("asset_id")
        if not isinstance(asset, str) or asset == "":
            raise Malformed("invalid price change")
        try:
            price = lenient_num(e.get("price"), "invalid price change")
            size = lenient_num(e.get("size"), "invalid price change")
        except Malformed:
            raise Malformed("invalid price change")
        if price is None or size is None or size < 0 or e.get("side") not in ("BUY", "SELL"):
            raise Malformed("invalid price change")
        change = ("change", e["side"] == "BUY", price + 0.0, size,
                  token_num(e.get("best_bid")), token_num(e.get("best_ask")))
        per_token.setdefault(asset, []).append(change)
    return [(asset, market, ("changes", changes)) for asset, changes in per_token.items()]


def poly_event(ev):
    if not isinstance(ev, dict):
        return ("bad", "event is not an object")
    kind, market = ev.get("event_type"), ev.get("market")
    if (kind is not None and not isinstance(kind, str)) or (market is not None and not isinstance(market, str)):
        return ("bad", "wrong field type")
    if kind is None:
        return ("bad", "missing event_type")
    ts = parse_ms(ev["timestamp"]) if "timestamp" in ev and ev["timestamp"] is not None else None
    if kind not in ("book", "last_trade_price", "price_change"):
        return ("ignored", ts if market else None)
    if market is None:
        return ("bad", "missing market")
    if market == "":
        return ("bad", "empty market")
    if ev.get("timestamp") is None:
        return ("bad", "missing timestamp")
    if ts is None:
        return ("bad", "invalid timestamp")
    asset = ev.get("asset_id")
    asset = asset if isinstance(asset, str) and asset != "" else None
    try:
        if kind == "price_change":
            tokens = price_change_tokens(ev, market)
            if not tokens:
                return ("ignored", ts)
            return ("rec", ts, None, tokens)
        if kind == "book":
            bid, bid_depth = best(ev.get("bids"), lambda a, b: a > b)
            ask, ask_depth = best(ev.get("asks"), lambda a, b: a < b)
            mid = spread = imb = None
            if bid is not None and ask is not None:
                mid, spread = (bid + ask) / 2, abs(ask - bid)
            if bid is not None and ask is not None and bid_depth is not None and ask_depth is not None and bid_depth + ask_depth > 0:
                imb = (bid_depth - ask_depth) / (bid_depth + ask_depth)
            if any(x is not None and not finite(x) for x in (mid, spread, imb)):
                return ("bad", "value out of range")
            tokens = [(asset, market, ("book", token_levels(ev.get("bids")), token_levels(ev.get("asks"))))] if asset else []
            return ("rec", ts, ("polymarket_books", market, {"mid": mid, "spread": spread, "imbalance": imb}), tokens)
        size = lenient_num(ev.get("size"), "invalid trade size")
        side = ev.get("side")
        tokens = [(asset, market, ("trade", token_num(ev.get("price")), size,
                                   True if side == "BUY" else False if side == "SELL" else None))] if asset else []
        return ("rec", ts, ("polymarket_trades", market, {"size": size}), tokens)
    except Malformed as e:
        return ("bad", str(e))


def quote(bids, asks):
    """prob, spread, imbalance, microprice of a token book ({price: size} per side)."""
    if not bids or not asks:
        return (None, None, None, None)
    bb, ba = max(bids), min(asks)
    bs, az = bids[bb], asks[ba]
    fin = lambda x: x if finite(x) else None
    try:
        return (fin((bb + ba) / 2), fin(abs(ba - bb)), fin((bs - az) / (bs + az)), fin((ba * bs + bb * az) / (bs + az)))
    except OverflowError:
        return (None, None, None, None)


def token_windows(events, W, ttl, observed=None):
    """events: [(time, order, asset, market, op)] on time; the polymarket_tokens rows."""
    rows = []
    by_asset = defaultdict(list)
    for ev in events:
        by_asset[ev[2]].append(ev)
    for asset, evs in by_asset.items():
        evs.sort(key=lambda e: (e[0], e[1]))
        bids, asks, last = {}, {}, None
        windows = defaultdict(list)  # end -> [(time, order, kind, values)]
        for t, order, _, market, op in evs:
            if last is not None and last + ttl <= t:
                bids, asks = {}, {}
            last = t if last is None else max(last, t)
            obs = []
            if op[0] == "book":
                bids, asks = dict(op[1]), dict(op[2])
                obs.append((quote(bids, asks), False))
            elif op[0] == "changes":
                for _, is_bid, price, size, rep_bid, rep_ask in op[1]:
                    side = bids if is_bid else asks
                    if size == 0:
                        side.pop(price, None)
                    else:
                        side[price] = size
                    mismatch = (rep_bid is not None and (max(bids) if bids else None) != rep_bid) or \
                               (rep_ask is not None and (min(asks) if asks else None) != rep_ask)
                    obs.append((quote(bids, asks), mismatch))
            end = (t // W + 1) * W
            windows[end].append((t, order, market, op, obs))
            if observed is not None:
                for i, (q, _) in enumerate(obs):
                    observed[asset].append((t, order, i, q[0]))
        for end, items in windows.items():
            rows.append(token_row(asset, end - W, end, items))
    return rows


def token_row(asset, start, end, items):
    quotes = [(t, order, i, q, mm) for t, order, _, _, obs in items for i, (q, mm) in enumerate(obs)]
    trades = [(t, order, op) for t, order, _, op, _ in items if op[0] == "trade"]
    probs = nn([q[0] for _, _, _, q, _ in quotes])
    cur = max(quotes, key=lambda x: (x[0], x[1], x[2]))[3] if quotes else (None,) * 4

    def side_sum(sel):
        picked = [op for _, _, op in trades if sel(op)]
        return 0.0 if not picked else total([op[2] for op in picked])

    priced = [(op[1], op[2]) for _, _, op in trades if op[1] is not None and op[2] is not None]
    notional = total([p * s if finite(p * s) else None for p, s in priced]) if priced else None
    volume = total([s for _, s in priced]) if priced else None
    vwap = notional / volume if notional is not None and volume is not None and volume > 0 else None
    last_price = max(trades, key=lambda x: (x[0], x[1]))[2][1] if trades else None
    return {"window_start": start, "window_end": end, "asset_id": asset, "market_id": items[0][2],
            "current_prob": cur[0], "avg_prob": avg(probs), "min_prob": min(probs) if probs else None,
            "max_prob": max(probs) if probs else None,
            "current_spread": cur[1], "avg_spread": avg([q[1] for _, _, _, q, _ in quotes]),
            "current_imbalance": cur[2], "avg_imbalance": avg([q[2] for _, _, _, q, _ in quotes]),
            "current_microprice": cur[3], "updates": len(quotes),
            "book_mismatches": sum(1 for *_, mm in quotes if mm),
            "num_trades": len(trades), "shares_traded": side_sum(lambda op: True),
            "buy_shares": side_sum(lambda op: op[3] is True), "sell_shares": side_sum(lambda op: op[3] is False),
            "vwap": vwap, "last_trade_price": last_price,
            "outcome": None, "slug": None, "title": None, "kind": "final", "revision": 1}


UPDOWN = re.compile(r"^(?:.*-)?updown-([0-9]+)([mhd])-([0-9]+)$")


def meta_list(v):
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            raise Malformed("incomplete metadata")
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise Malformed("incomplete metadata")
    return v


def meta_event(v):
    """formats.md "Metadata": (slug, title, [(token, outcome)]) of one Gamma event."""
    if not isinstance(v, dict) or "error" in v or "errors" in v:
        raise Malformed("metadata error")
    slug, title = v.get("slug"), v.get("title")
    if not (isinstance(slug, str) and slug and isinstance(title, str) and title):
        raise Malformed("incomplete metadata")
    ms = v.get("markets")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise Malformed("incomplete metadata")
    cond = ms[0].get("conditionId")
    if not isinstance(cond, str) or not cond:
        raise Malformed("incomplete metadata")
    outcomes, ids = meta_list(ms[0].get("outcomes")), meta_list(ms[0].get("clobTokenIds"))
    if not ids or len(ids) != len(outcomes):
        raise Malformed("incomplete metadata")
    return slug, title, list(zip(ids, outcomes))


def slug_start(slug):
    m = UPDOWN.match(slug)
    return int(m.group(3)) * 1000 if m else None


def read_metadata(files, horizon, counts):
    """Versions per token: [(time, order, outcome, slug, title)]. Never late."""
    versions = defaultdict(list)
    for part, path in enumerate(files):
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, start=1):
                raw = raw.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"), parse_constant=no_constants)
                except (ValueError, UnicodeDecodeError):
                    counts["malformed"] += 1
                    continue
                if not isinstance(obj, dict) or not obj:
                    counts["malformed"] += 1
                    continue
                for index, (name, v) in enumerate(obj.items()):
                    try:
                        slug, title, tokens = meta_event(v)
                        market_id = v["markets"][0]["conditionId"]
                    except Malformed:
                        counts["malformed"] += 1
                        continue
                    t = slug_start(slug)  # files carry no Kafka timestamp
                    if t is None or t > horizon:
                        counts["malformed"] += 1
                        continue
                    counts["records"] += 1
                    for token, outcome in tokens:
                        versions[token].append((t, (part, lineno, index), outcome, slug, title, market_id))
    return versions


def as_of(row, versions, ttl):
    """The token's metadata as of the window end: the latest version with time < end."""
    end = row["window_end"]
    ok = [v for v in versions.get(row["asset_id"], []) if v[0] < end <= v[0] + ttl]
    if ok:
        _, _, row["outcome"], row["slug"], row["title"], _ = max(ok, key=lambda v: (v[0], v[1]))
    return row


def nn(xs):
    return [x for x in xs if x is not None]


def finite_fsum(xs):
    """fsum, or None when it (or an intermediate) overflows."""
    try:
        s = math.fsum(xs)
    except OverflowError:
        return None
    return s if finite(s) else None


def total(xs):
    """A sum is null when the sum of absolute values overflows (whatever the order)."""
    xs = nn(xs)
    if not xs or finite_fsum(abs(x) for x in xs) is None:
        return None
    return finite_fsum(xs)


def avg(xs):
    t = total(xs)
    return None if t is None else t / len(nn(xs))


def stdev(xs):
    """Sample stddev; null for one value, or when the squared deviations overflow."""
    if len(xs) < 2 or total(xs) is None:
        return None
    m = math.fsum(xs) / len(xs)
    try:
        if finite_fsum((x - m) ** 2 for x in xs) is None:
            return None
        return statistics.stdev(xs)
    except OverflowError:
        return None


def window_row(stream, key, start, end, recs):
    row = window_metrics(stream, key, start, end, recs)
    row["kind"], row["revision"] = "final", 1  # with the default --emit final and no allowed lateness
    return row


def window_metrics(stream, key, start, end, recs):
    # recs: list of (time, order, values); current_* is the greatest (time, order)
    cur = max(recs, key=lambda r: (r[0], r[1]))[2]
    col = lambda f: [r[2][f] for r in recs]
    if stream == "binance":
        prices = nn(col("price"))
        return {"window_start": start, "window_end": end, "symbol": key,
                "current_price": cur["price"], "current_sentiment": cur["sentiment"],
                "avg_price": avg(prices), "min_price": min(prices) if prices else None,
                "max_price": max(prices) if prices else None,
                "volatility": stdev(prices),
                "total_usdt_volume": total(col("usdt_volume")), "avg_sentiment": avg(col("sentiment")),
                "ticks": len(recs)}
    if stream == "polymarket_books":
        mids = nn(col("mid"))
        return {"window_start": start, "window_end": end, "market_id": key,
                "current_prob": cur["mid"], "current_spread": cur["spread"], "current_imbalance": cur["imbalance"],
                "avg_prob": avg(mids), "min_prob": min(mids) if mids else None, "max_prob": max(mids) if mids else None,
                "avg_imbalance": avg(col("imbalance")), "avg_spread": avg(col("spread")), "num_updates": len(recs)}
    return {"window_start": start, "window_end": end, "market_id": key,
            "total_shares_traded": total(col("size")), "num_trades": len(recs)}


UNDERLYINGS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")


def correlation_rows(rows, W):
    """formats.md "Cross-market", correlations. rows: {symbol: [(time, order, close)]} on time."""
    latest = {}  # symbol -> {minute: (time, order, close)}
    for sym, rs in rows.items():
        per_minute = {}
        for t, order, close in rs:
            m = t - t % 60000
            if m not in per_minute or (t, order) > per_minute[m][:2]:
                per_minute[m] = (t, order, close)
        latest[sym] = (sorted(per_minute), per_minute)

    def close_before(sym, x):
        minutes, per_minute = latest[sym]
        i = bisect.bisect_left(minutes, x)  # minutes < x
        return per_minute[minutes[i - 1]][2] if i > 0 else None

    def ret(sym, x):
        a, b = close_before(sym, x), close_before(sym, x - 60000)
        if a is None or b is None or b == 0 or a / b <= 0:
            return None
        return math.log(a / b)

    ends = defaultdict(set)
    for sym, rs in rows.items():
        for t, _, _ in rs:
            ends[sym].add((t // W + 1) * W)
    out = []
    syms = sorted(s for s in rows if s in UNDERLYINGS)
    for i, a in enumerate(syms):
        for b in syms[i + 1:]:
            for e in sorted(ends[a] & ends[b]):
                pairs = [(ret(a, x), ret(b, x)) for x in (e - k * 60000 for k in range(60))]
                pairs = [p for p in pairs if p[0] is not None and p[1] is not None]
                n, r = len(pairs), None
                if n >= 10:
                    ma = sum(p[0] for p in pairs) / n
                    mb = sum(p[1] for p in pairs) / n
                    cov = sum((p[0] - ma) * (p[1] - mb) for p in pairs)
                    va = sum((p[0] - ma) ** 2 for p in pairs)
                    vb = sum((p[1] - mb) ** 2 for p in pairs)
                    if va > 0 and vb > 0:
                        r = max(-1.0, min(1.0, cov / math.sqrt(va * vb)))
                out.append({"window_start": e - W, "window_end": e, "pair": f"{a}/{b}",
                            "correlation": r, "n": n, "kind": "final", "revision": 1})
    return out


UNIT = {"m": 60000, "h": 3600000, "d": 86400000}
PREFIX = {"btc": "BTCUSDT", "eth": "ETHUSDT", "sol": "SOLUSDT", "xrp": "XRPUSDT"}
RULES = {"return_zscore": 4.0, "prob_jump": 0.15, "edge": 0.2, "book_mismatch": 0.0}
COOLDOWN = 300000


def phi(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


class Closes:
    """One underlying's on-time kline rows: c(x), r(x), sigma(x) of formats.md."""

    def __init__(self, rows):
        self.rows = sorted(rows, key=lambda r: (r[0], r[1]))
        self.keys = [(t, o) for t, o, _ in self.rows]

    def before(self, x):  # latest row with time < x
        i = bisect.bisect_left(self.keys, (x,))
        return self.rows[i - 1][2] if i > 0 else None

    def at_or_before(self, x):  # latest row with time <= x
        i = bisect.bisect_left(self.keys, (x + 1,))
        return self.rows[i - 1][2] if i > 0 else None

    def ret(self, x):
        a, b = self.before(x), self.before(x - 60000)
        if a is None or b is None or b == 0 or a / b <= 0:
            return None
        return math.log(a / b)

    def sigma(self, e):
        rs = [r for r in (self.ret(e - k * 60000) for k in range(60)) if r is not None]
        if len(rs) < 10:
            return None
        m = sum(rs) / len(rs)
        return math.sqrt(sum((r - m) ** 2 for r in rs) / (len(rs) - 1))


def fair_up(spot, strike, sigma, tau):
    if tau == 0:
        return 1.0 if spot >= strike else 0.0
    if sigma == 0:
        return 1.0 if spot > strike else 0.0 if spot < strike else 0.5
    return phi(math.log(spot / strike) / (sigma * math.sqrt(tau)))


def updown_rows(kline_rows, versions, observations, W, meta_ttl):
    """formats.md "Cross-market", updown: one row per up/down token per window end in (start, end]."""
    if W % 60000:
        return []
    closes = {u: Closes(rs) for u, rs in kline_rows.items() if u in UNDERLYINGS}
    probs = {a: sorted(obs) for a, obs in observations.items()}  # [(time, order, i, prob)]
    out = []
    for token, vs in versions.items():
        ends = set()
        for v in vs:
            m = UPDOWN.match(v[3])
            if m and v[3].split("-")[0] in PREFIX:
                start = int(m.group(3)) * 1000
                end = start + int(m.group(1)) * UNIT[m.group(2)]
                ends.update(range((start // W + 1) * W, end + 1, W))
        for e in sorted(ends):
            ok = [v for v in vs if v[0] < e <= v[0] + meta_ttl]
            if not ok:
                continue
            _, _, outcome, slug, title, market_id = max(ok, key=lambda v: (v[0], v[1]))
            m = UPDOWN.match(slug)
            if not m or slug.split("-")[0] not in PREFIX:
                continue
            start = int(m.group(3)) * 1000
            end = start + int(m.group(1)) * UNIT[m.group(2)]
            if not (start < e <= end):
                continue
            u = PREFIX[slug.split("-")[0]]
            c = closes.get(u)
            strike = c.at_or_before(start) if c else None
            spot = c.before(e) if c else None
            sigma = c.sigma(e) if c else None
            tau = (end - e) / 60000
            fair = None
            if None not in (spot, strike, sigma):
                up = fair_up(spot, strike, sigma, tau)
                fair = up if outcome == "Up" else 1 - up if outcome == "Down" else None
            seen = [o for o in probs.get(token, []) if o[0] < e]
            market = seen[-1][3] if seen else None
            edge = market - fair if market is not None and fair is not None else None
            out.append({"window_start": e - W, "window_end": e, "asset_id": token, "market_id": market_id,
                        "underlying": u, "outcome": outcome, "slug": slug, "strike": strike, "spot": spot,
                        "sigma": sigma, "tau_min": tau, "fair_prob": fair, "market_prob": market, "edge": edge,
                        "kind": "final", "revision": 1})
    return out


def alert_rows(kline_rows, updown, tokens, W):
    """formats.md "Cross-market", alerts with the default rules and cooldown."""
    cands = []  # (window_end, rule, key, window_start, value)
    if W % 60000 == 0:
        for u, rs in kline_rows.items():
            if u not in UNDERLYINGS or not rs:
                continue
            c = Closes(rs)
            first, last = min(r[0] for r in rs), max(r[0] for r in rs)
            for e in range((first // W + 1) * W, last + max(60000, W) + 1, W):
                r, s = c.ret(e), c.sigma(e - 60000)
                if r is not None and s is not None and s > 0 and abs(r) / s >= RULES["return_zscore"]:
                    cands.append((e, "return_zscore", u, e - W, abs(r) / s))
    for row in updown:
        if row["edge"] is not None and abs(row["edge"]) >= RULES["edge"]:
            cands.append((row["window_end"], "edge", row["asset_id"], row["window_start"], row["edge"]))
    for row in tokens:
        lo, hi = row["min_prob"], row["max_prob"]
        if lo is not None and hi is not None and hi - lo >= RULES["prob_jump"]:
            cands.append((row["window_end"], "prob_jump", row["asset_id"], row["window_start"], hi - lo))
        if row["book_mismatches"] > RULES["book_mismatch"]:
            cands.append((row["window_end"], "book_mismatch", row["asset_id"], row["window_start"],
                          row["book_mismatches"]))
    last, out = {}, []
    for e, rule, key, start, value in sorted(cands, key=lambda c: c[0]):
        if (rule, key) in last and e < last[(rule, key)] + COOLDOWN:
            continue
        last[(rule, key)] = e
        out.append({"window_start": start, "window_end": e, "key": key, "rule": rule, "value": value,
                    "threshold": RULES[rule], "message": "", "kind": "final", "revision": 1})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--window-ms", type=int, default=60000)
    ap.add_argument("--lateness-ms", type=int, default=120000)
    ap.add_argument("--max-future-ms", type=int, default=3600000)
    ap.add_argument("--book-ttl-ms", type=int, default=3600000)
    ap.add_argument("--metadata-ttl-ms", type=int, default=86400000)
    ap.add_argument("--metadata", action="append", default=[])
    ap.add_argument("--binance", action="append", default=[])
    ap.add_argument("--polymarket", action="append", default=[])
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    W, L = a.window_ms, a.lateness_ms
    now = int(time.time() * 1000)
    horizon = min(now + a.max_future_ms, MAX_EVENT_TIME)
    windows = defaultdict(list)  # (stream, key, end) -> [(time, order, values)]
    token_events = []  # (time, order, asset, market, op)
    kline_rows = defaultdict(list)  # symbol -> [(time, order, close)] on time
    summary = {}
    for topic, files, decode in (("binance", a.binance, binance_records), ("polymarket_trade", a.polymarket, poly_records)):
        counts = {"records": 0, "late": 0, "malformed": 0, "ignored": 0}
        for part, path in enumerate(files):
            max_seen = None
            with open(path, "rb") as f:
                for lineno, raw in enumerate(f, start=1):
                    raw = raw.rstrip(b"\r\n")
                    if not raw.strip(b" \t\n\r\x0c"):
                        continue
                    try:
                        value = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        counts["malformed"] += 1  # invalid UTF-8: the whole message
                        continue
                    # The watermark before this message decides for every record in it.
                    closed = None if max_seen is None else max_seen - L
                    newest = None
                    for index, item in enumerate(decode(value)):
                        if item[0] == "bad":
                            counts["malformed"] += 1
                            continue
                        t = item[1]
                        if t is not None and t > horizon:
                            counts["malformed"] += 1  # event time in the future / out of range
                            continue
                        if item[0] == "ignored":
                            counts["ignored"] += 1
                            if t is not None:
                                newest = t if newest is None else max(newest, t)
                            continue
                        t, rec = item[1], item[2]
                        end = (t // W + 1) * W
                        if closed is not None and end <= closed:
                            counts["late"] += 1
                            continue
                        newest = t if newest is None else max(newest, t)
                        counts["records"] += 1
                        order = (part, lineno, index)
                        if rec is not None:
                            stream, key, vals = rec
                            windows[(stream, key, end)].append((t, order, vals))
                            if stream == "binance":
                                kline_rows[key].append((t, order, vals["price"]))
                        for asset, market, op in (item[3] if len(item) > 3 else []):
                            token_events.append((t, order, asset, market, op))
                    if newest is not None:
                        max_seen = newest if max_seen is None else max(max_seen, newest)
        summary[topic] = counts
    meta_counts = {"records": 0, "late": 0, "malformed": 0, "ignored": 0}
    versions = read_metadata(a.metadata, horizon, meta_counts)
    summary["polymarket_metadata"] = meta_counts
    os.makedirs(a.out, exist_ok=True)
    outs = {s: open(os.path.join(a.out, s + ".jsonl"), "w") for s in ("binance", "polymarket_books", "polymarket_trades", "polymarket_tokens", "correlations", "updown", "alerts")}
    for row in correlation_rows(kline_rows, W):
        outs["correlations"].write(json.dumps(row) + "\n")
    for (stream, key, end) in sorted(windows):
        outs[stream].write(json.dumps(window_row(stream, key, end - W, end, windows[(stream, key, end)])) + "\n")
    observed = defaultdict(list)
    token_rows = sorted(token_windows(token_events, W, a.book_ttl_ms, observed), key=lambda r: (r["window_end"], r["asset_id"]))
    for row in token_rows:
        outs["polymarket_tokens"].write(json.dumps(as_of(dict(row), versions, a.metadata_ttl_ms)) + "\n")
    updown = updown_rows(kline_rows, versions, observed, W, a.metadata_ttl_ms)
    for row in updown:
        outs["updown"].write(json.dumps(row) + "\n")
    for row in alert_rows(kline_rows, updown, token_rows, W):
        outs["alerts"].write(json.dumps(row) + "\n")
    for f in outs.values():
        f.close()
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
