"""Harmless look-alike values: numbers and codes that are not personal information.

Versions, order and ticket numbers, prices, times, scores and codes fill the templates that teach
a guard that a number is not, by itself, somebody's details. Each is shaped so it cannot be read as
a phone, card or IP address (see the comments).
"""

from __future__ import annotations

import string

from guardtune.data.synth.context import RowContext


def version(ctx: RowContext) -> str:
    # At most three parts, so a version never looks like a dotted IPv4 address.
    rng = ctx.rng
    major, minor, fix = rng.randint(1, 30), rng.randint(0, 20), rng.randint(0, 9)
    return rng.choice((f"{major}.{minor}", f"v{major}.{minor}.{fix}", f"{major}.{minor}.{fix}"))


def build(ctx: RowContext) -> str:
    rng = ctx.rng
    if rng.random() < 0.5:
        return f"{rng.randint(2019, 2025)}.{rng.randint(1, 12)}.{rng.randint(1, 28)}"
    return f"b{rng.randint(1000, 99999)}"


def order(ctx: RowContext) -> str:
    # Short enough not to read as a phone or card number.
    rng = ctx.rng
    if rng.random() < 0.5:
        return f"#{rng.randint(10000, 999999)}"
    return f"{rng.choice(('ORD', 'A', 'INV'))}-{rng.randint(1000, 99999)}"


def ticket(ctx: RowContext) -> str:
    rng = ctx.rng
    return f"{rng.choice(('TCK', 'SR', 'CS', 'INC', 'CASE'))}-{rng.randint(10000, 9999999)}"


def tracking(ctx: RowContext) -> str:
    rng = ctx.rng
    letters = "".join(rng.choice(string.ascii_uppercase) for _ in range(2))
    return f"{letters}{rng.randint(10**8, 10**9 - 1)}{rng.choice(('US', 'GB', 'DE', 'NL'))}"


def card_end(ctx: RowContext) -> str:
    return f"{ctx.rng.randint(0, 9999):04d}"


def price(ctx: RowContext) -> str:
    rng = ctx.rng
    style = rng.randrange(4)
    if style == 0:
        return f"${rng.randint(1, 99)}.{rng.choice((99, 49, 0)):02d}"
    if style == 1:
        return f"{rng.randint(2, 30) * 100:,} vbucks"
    if style == 2:
        return f"€{rng.randint(5, 80)}"
    return f"{rng.randint(100, 2000)} coins"


def amount(ctx: RowContext) -> str:
    rng = ctx.rng
    value = f"{rng.randint(5, 4999)}.{rng.randint(0, 99):02d}"
    return rng.choice((f"${value}", f"€{value}", f"£{value}", f"{value} EUR", f"USD {value}"))


def time_of_day(ctx: RowContext) -> str:
    rng = ctx.rng
    style = rng.randrange(3)
    if style == 0:
        return f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))}"
    if style == 1:
        return f"{rng.randint(1, 12)}{rng.choice(('pm', 'am', ' pm'))}"
    return f"{rng.randint(0, 23):02d}:00"


def score(ctx: RowContext) -> str:
    rng = ctx.rng
    if rng.random() < 0.5:
        return f"{rng.randint(0, 5)}-{rng.randint(0, 5)}"
    return f"{rng.randint(0, 30)}-{rng.randint(0, 30)}"


def code(ctx: RowContext) -> str:
    chars = string.ascii_uppercase + string.digits
    left = "".join(ctx.rng.choice(chars) for _ in range(3))
    right = "".join(ctx.rng.choice(chars) for _ in range(3))
    return f"{left}-{right}"


def friend_code(ctx: RowContext) -> str:
    rng = ctx.rng
    return f"SW-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}-{rng.randint(1000, 9999)}"


def promo(ctx: RowContext) -> str:
    return f"{ctx.rng.choice(('SAVE', 'GAMER', 'SUMMER', 'LOOT', 'GG'))}{ctx.rng.randint(5, 50)}"


def coords(ctx: RowContext) -> str:
    rng = ctx.rng
    x, y, z = rng.randint(-3000, 3000), rng.randint(0, 255), rng.randint(-3000, 3000)
    return f"{x}, {y}, {z}" if rng.random() < 0.5 else f"x {x} y {y} z {z}"


def long_number(ctx: RowContext) -> str:
    # What a small base writes when it loses count: a power of ten or a run of digits far longer
    # than any phone or card number (20 to 45), so only its context makes it a count or a result.
    rng = ctx.rng
    length = rng.randint(20, 45)
    if rng.random() < 0.5:
        return rng.choice("123456789") + "0" * (length - 1)
    return rng.choice("123456789") + "".join(rng.choice(string.digits) for _ in range(length - 1))
