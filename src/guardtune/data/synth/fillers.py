"""Placeholder values: Faker- and digit-built fillers, plus the word lists of ``words.yaml``.

The harmless look-alike numbers and codes (prices, versions, tickets) live in ``lookalikes.py``.

A filler takes the row's :class:`RowContext` (its random generator and the Faker of the row's
locale) and returns the text for one placeholder. Which fillers are personal information, and which
``pii-categories`` category a filler's value is, is declared here once: template files only name
placeholders, so a template can never disagree with its label.
"""

from __future__ import annotations

import random
import re
import string
import unicodedata
from collections.abc import Callable
from functools import cache
from importlib import resources
from typing import Any

import yaml

from guardtune.data.synth import lookalikes
from guardtune.data.synth.context import Filler, RowContext
from guardtune.errors import GuardtuneError

# Placeholders whose value is, by itself, a pii-categories category.
FIELD_CATEGORY: dict[str, str] = {
    "name": "S1",
    "ip": "S2",
    "phone": "S3",
    "address": "S4",
    "street": "S4",
    "card": "S5",
}

# Placeholders whose value is somebody's personal information: a pii-intent `giving` template
# needs one, a `none` template may hold none.
PERSONAL_FIELDS: frozenset[str] = frozenset(
    {
        "name", "first", "email", "phone", "street", "address", "city", "state", "zip", "user",
        "age", "school", "bday", "ip", "card", "phone_words", "phone_spaced", "email_spoken",
        "handle", "partial_address", "street_name", "email_named", "ssn", "dob", "iban",
        "bank_account", "exp", "cvv",
    }
)  # fmt: skip

_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _ascii(text: str) -> str:
    # E-mail local parts and domains are ASCII; Faker names of other locales carry accents.
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in folded.lower() if c.isalnum() or c in ".-_")


def username(ctx: RowContext) -> str:
    rng = ctx.rng
    adj, noun, num = rng.choice(words("_user_adj")), rng.choice(words("_user_noun")), rng.randint(1, 999)
    style = rng.randrange(5)
    if style == 0:
        return f"{adj}_{noun}{num}"
    if style == 1:
        return f"{adj}{noun}{num}"
    if style == 2:
        return f"xX{adj}{noun}Xx"
    if style == 3:
        return f"{adj}.{noun}_{num}"
    return f"{noun}{adj}{rng.randint(1, 99):02d}"


def full_name(ctx: RowContext) -> str:
    first, last = ctx.fake.first_name(), ctx.fake.last_name()
    if ctx.rng.random() < 0.15:
        return f"{first} {ctx.rng.choice(string.ascii_uppercase)}. {last}"
    return f"{first} {last}"


def email(ctx: RowContext) -> str:
    fake, rng = ctx.fake, ctx.rng
    style = rng.randrange(4)
    if style == 0:
        return str(fake.email())
    if style == 1:
        return str(fake.free_email())
    if style == 2:
        return f"{username(ctx).replace('.', '_')}@{fake.free_email_domain()}".lower()
    local = f"{_ascii(fake.first_name())}.{_ascii(fake.last_name())}{rng.randint(1, 99)}"
    return f"{local}@{fake.free_email_domain()}".lower()


def email_named(ctx: RowContext) -> str:
    """A work address with a person's name in it: still an e-mail address, not a name (S1)."""
    fake, rng = ctx.fake, ctx.rng
    first, last = _ascii(fake.first_name()), _ascii(fake.last_name())
    local = rng.choice((f"{first}.{last}", f"{first[0]}{last}", f"{first}_{last}", f"{last}.{first}"))
    domain = _ascii(fake.domain_name()) if rng.random() < 0.7 else f"{rng.choice(words('_free_domain'))}.com"
    return f"{local}@{domain}"


def email_spoken(ctx: RowContext) -> str:
    """An address written out to dodge filters: ``jake dot m at gmail dot com``."""
    rng = ctx.rng
    local = _ascii(ctx.fake.first_name()) + rng.choice(("", str(rng.randint(1, 99)), ".x"))
    local = local.replace(".", rng.choice((" dot ", ".")))
    at = rng.choice((" at ", " (at) ", " [at] ", "@"))
    dot = rng.choice((" dot ", " (dot) ", "."))
    return f"{local}{at}{rng.choice(words('_free_domain'))}{dot}com"


# A dotted phone such as Faker's en_AU "+61.412.110.166" reads as an IPv4 address, and S2 is a
# category of its own, so such a draw is replaced.
_LOOKS_LIKE_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def phone(ctx: RowContext) -> str:
    if ctx.locale != "en_US" or ctx.rng.random() < 0.4:
        drawn = str(ctx.fake.phone_number())
        if not _LOOKS_LIKE_IPV4.search(drawn):
            return drawn
    return str(ctx.fake.numerify(ctx.rng.choice(words("_phone_format"))))


def _phone_digits(ctx: RowContext) -> str:
    return "".join(c for c in ctx.fake.numerify(ctx.rng.choice(words("_phone_format")[:6])) if c.isdigit())


def phone_words(ctx: RowContext) -> str:
    """Digits spelled out, some left as digits: ``five five 5 two one...``."""
    rng = ctx.rng
    words = [_DIGIT_WORDS[int(d)] if rng.random() < 0.8 else d for d in _phone_digits(ctx)]
    return rng.choice((" ", "-", " ")).join(words)


def phone_spaced(ctx: RowContext) -> str:
    """Digits split by spaces or dots so no run looks like a phone number."""
    digits = _phone_digits(ctx)
    return ctx.rng.choice((" ", " . ", "-", "  ")).join(digits)


def street(ctx: RowContext) -> str:
    fake, rng = ctx.fake, ctx.rng
    if ctx.locale != "en_US" or rng.random() < 0.5:
        return " ".join(str(fake.street_address()).split())
    word = rng.choice(words("_street_word")).title() if rng.random() < 0.5 else fake.last_name()
    return f"{rng.randint(1, 9999)} {word} {rng.choice(words('_street_suffix'))}"


def street_name(ctx: RowContext) -> str:
    return f"{ctx.rng.choice(words('_street_word'))} {ctx.rng.choice(words('_street_suffix'))}"


def place_address(ctx: RowContext) -> str:
    """A street address of a place in a game or a story: the shape of :func:`street`, nobody's home."""
    rng = ctx.rng
    return f"{rng.randint(1, 999)} {rng.choice(words('_street_word'))} {rng.choice(words('_street_suffix'))}"


def partial_address(ctx: RowContext) -> str:
    rng = ctx.rng
    w1, w2 = rng.sample(words("_street_word"), 2)
    suffix = rng.choice(words("_street_suffix"))
    return rng.choice(
        (
            f"the corner of {w1} and {w2}",
            f"apt {rng.randint(1, 40)}{rng.choice('abcd')} on {w1} {suffix}",
            f"the blue house on {w1} {suffix}",
            f"{rng.randint(1, 999)} {w1}",
            f"{w1} {suffix} near the {rng.choice(('gas station', 'park', 'school', 'church', 'mall'))}",
        )
    )


def city(ctx: RowContext) -> str:
    return str(ctx.fake.city())


def address(ctx: RowContext) -> str:
    fake, rng = ctx.fake, ctx.rng
    line = street(ctx)
    if ctx.locale != "en_US":
        return rng.choice((f"{line}, {fake.postcode()} {fake.city()}", f"{line}, {fake.city()}"))
    style = rng.randrange(3)
    if style == 0:
        return f"{line}, {fake.city()}, {fake.state_abbr()} {fake.zipcode()}"
    if style == 1:
        return f"{line}, {fake.city()}"
    return f"{line} {fake.city()} {fake.zipcode()}"


def ip(ctx: RowContext) -> str:
    roll = ctx.rng.random()
    if roll < 0.5:
        return str(ctx.fake.ipv4_public())
    if roll < 0.7:
        return str(ctx.fake.ipv4_private())
    return str(ctx.fake.ipv6())


def card(ctx: RowContext) -> str:
    # Maestro's 12-digit numbers are left out: too short to read as a card in a chat message.
    rng = ctx.rng
    kind = rng.choice(("visa16", "visa16", "mastercard", "mastercard", "amex", "discover", "jcb16"))
    digits = str(ctx.fake.credit_card_number(card_type=kind))
    sep = rng.choice(("", "", " ", "-"))
    if not sep:
        return digits
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _spaced_groups(text: str, rng: random.Random) -> str:
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4)) if rng.random() < 0.5 else text


def iban(ctx: RowContext) -> str:
    return _spaced_groups(str(ctx.fake.iban()), ctx.rng)


def bank_account(ctx: RowContext) -> str:
    rng = ctx.rng
    if rng.random() < 0.5:
        return str(ctx.fake.bban())
    return (
        f"{rng.randint(10, 99)}-{rng.randint(10, 99)}-{rng.randint(10, 99)} {rng.randint(10**7, 10**8 - 1)}"
    )


def ssn(ctx: RowContext) -> str:
    """A national ID or social security number in the row's locale's format."""
    if ctx.locale in _DATED_IDS:
        # Faker builds these from today's date; the same seed must give the same data on any day.
        return _DATED_IDS[ctx.locale](ctx)
    return str(ctx.fake.ssn())


def _personnummer(ctx: RowContext) -> str:
    return _date(ctx, (1940, 2008), ("{y2:02d}{m:02d}{d:02d}",)) + f"-{ctx.rng.randint(0, 9999):04d}"


def _pesel(ctx: RowContext) -> str:
    return _date(ctx, (1940, 1999), ("{y2:02d}{m:02d}{d:02d}",)) + f"{ctx.rng.randint(0, 99999):05d}"


_DATED_IDS: dict[str, Callable[[RowContext], str]] = {"sv_SE": _personnummer, "pl_PL": _pesel}


def _date(ctx: RowContext, years: tuple[int, int], formats: tuple[str, ...]) -> str:
    # Built from rng rather than Faker's date helpers, which depend on today's date.
    rng = ctx.rng
    month, day, year = rng.randint(1, 12), rng.randint(1, 28), rng.randint(*years)
    name = words("_month")[month - 1]
    return rng.choice(formats).format(m=month, d=day, y=year, y2=year % 100, month=name, Month=name.title())


def date_of_birth(ctx: RowContext) -> str:
    """A date of birth as forms write it: ``03/05/1970``, ``05.03.1970``, ``5 March 1970``."""
    return _date(
        ctx,
        (1940, 2012),
        ("{m:02d}/{d:02d}/{y}", "{d:02d}.{m:02d}.{y}", "{d} {Month} {y}", "{y}-{m:02d}-{d:02d}"),
    )


def bday(ctx: RowContext) -> str:
    """A birthday as a teenager types it: ``march 5``, ``3/5/2009``, ``5 march 2009``."""
    return _date(ctx, (1988, 2015), ("{month} {d}", "{m}/{d}/{y}", "{d} {month} {y}", "{y}-{m:02d}-{d:02d}"))


def company(ctx: RowContext) -> str:
    if ctx.rng.random() < 0.5:
        return " ".join(str(ctx.fake.company()).split())
    return (
        f"{ctx.rng.choice(words('company_word')).title()} {ctx.rng.choice(words('company_suffix')).title()}"
    )


def school(ctx: RowContext) -> str:
    base = ctx.fake.last_name() if ctx.rng.random() < 0.6 else str(ctx.fake.city())
    return f"{base} {ctx.rng.choice(words('_school_kind'))}"


def date(ctx: RowContext) -> str:
    month, day = words("_month")[ctx.rng.randrange(12)], ctx.rng.randint(1, 28)
    return f"{month} {day}" if ctx.rng.random() < 0.6 else f"{day} {month}"


def _int(low: int, high: int) -> Filler:
    return lambda ctx: str(ctx.rng.randint(low, high))


_BUILT: dict[str, Filler] = {
    # personal information
    "name": full_name,
    "first": lambda ctx: str(ctx.fake.first_name()),
    "email": email,
    "phone": phone,
    "street": street,
    "address": address,
    "city": city,
    "state": lambda ctx: str(ctx.fake.state_abbr() if ctx.rng.random() < 0.6 else ctx.fake.state()),
    "zip": lambda ctx: str(ctx.fake.zipcode()),
    "user": username,
    "age": lambda ctx: str(ctx.rng.randint(10, 19) if ctx.rng.random() < 0.8 else ctx.rng.randint(20, 35)),
    "school": school,
    "bday": bday,
    "ip": ip,
    "card": card,
    "exp": lambda ctx: f"{ctx.rng.randint(1, 12):02d}/{ctx.rng.randint(25, 32)}",
    "cvv": lambda ctx: f"{ctx.rng.randint(100, 999)}",
    "phone_words": phone_words,
    "phone_spaced": phone_spaced,
    "email_spoken": email_spoken,
    "handle": lambda ctx: "@" + username(ctx),
    "partial_address": partial_address,
    "street_name": street_name,
    # personal data outside the five pii-categories categories
    "email_named": email_named,
    "iban": iban,
    "bank_account": bank_account,
    "ssn": ssn,
    "dob": date_of_birth,
    "url": lambda ctx: str(ctx.fake.url()),
    "company": company,
    "card_end": lookalikes.card_end,
    # harmless look-alikes
    "ign": username,
    "place_address": place_address,
    "score": lookalikes.score,
    "lvl": _int(1, 150),
    "num": _int(2, 60),
    "small": _int(1, 9),
    "kd": lambda ctx: f"{ctx.rng.uniform(0.3, 4.0):.1f}",
    "time": lookalikes.time_of_day,
    "price": lookalikes.price,
    "amount": lookalikes.amount,
    "version": lookalikes.version,
    "build": lookalikes.build,
    "order": lookalikes.order,
    "ticket": lookalikes.ticket,
    "tracking": lookalikes.tracking,
    "bigscore": lambda ctx: f"{ctx.rng.randint(10_000, 9_999_999):,}",
    "long_number": lookalikes.long_number,
    "code": lookalikes.code,
    "friend_code": lookalikes.friend_code,
    "promo": lookalikes.promo,
    "temp": _int(-10, 40),
    "year": _int(1990, 2024),
    "ms": _int(8, 250),
    "pct": lambda ctx: f"{ctx.rng.randint(1, 99)}%",
    "coords": lookalikes.coords,
    "date": date,
    "itemid": _int(1000, 99999),
    "room": _int(100, 999),
}


@cache
def _word_lists() -> dict[str, tuple[str, ...]]:
    source = resources.files("guardtune.data.synth").joinpath("templates", "words.yaml")
    where = "guardtune/data/synth/templates/words.yaml"
    raw: Any = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise GuardtuneError(f"{where}: expected a mapping of list name -> words")
    lists: dict[str, tuple[str, ...]] = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values or not all(isinstance(w, str) and w for w in values):
            raise GuardtuneError(f"{where}: {key}: expected a non-empty list of words")
        if key in _BUILT:
            raise GuardtuneError(f"{where}: {key}: the name of a built-in filler; choose another name")
        lists[str(key)] = tuple(values)
    return lists


def words(name: str) -> tuple[str, ...]:
    """The word list ``name`` of ``words.yaml`` (names starting with ``_`` are fillers' own lists)."""
    return _word_lists()[name]


def _pick(options: tuple[str, ...]) -> Filler:
    return lambda ctx: ctx.rng.choice(options)


@cache
def fillers() -> dict[str, Filler]:
    """Every placeholder a template may use: the built fillers plus one per word list."""
    lists = _word_lists().items()
    # Lists named with a leading underscore feed the built fillers; they are not placeholders.
    return {**_BUILT, **{key: _pick(values) for key, values in lists if not key.startswith("_")}}
