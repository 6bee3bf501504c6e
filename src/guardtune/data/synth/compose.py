"""Turn a family's templates into rows: pick, fill, style, and keep near-duplicates out."""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from faker import Faker

from guardtune.data.synth.context import RowContext
from guardtune.data.synth.families import Family, field_root, parse_template, template_fields
from guardtune.data.synth.fillers import FIELD_CATEGORY, fillers
from guardtune.data.synth.style import Piece, apply_style

T = TypeVar("T")
# Enough to escape collisions on value-free templates without looping forever on tiny pools.
_MAX_RETRIES = 30


class Renderer:
    """Fills templates for one ``generate`` call: one random stream, one Faker per locale."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self._seed = seed
        self._fakes: dict[str, Faker] = {}
        self._fill = fillers()

    def context(self, family: Family) -> RowContext:
        locale = family.locales[0] if len(family.locales) == 1 else self.rng.choice(family.locales)
        if locale not in self._fakes:
            fake = Faker(locale)
            # One stream per locale: the same seed everywhere would repeat values across locales.
            fake.seed_instance(self._seed * 1_000_003 + zlib.crc32(locale.encode()))
            for provider in fake.providers:
                # Some providers build their city list from a set, whose order changes with
                # PYTHONHASHSEED; sorted, the same seed gives the same rows in every process.
                if isinstance(getattr(provider, "cities", None), list):
                    provider.cities = sorted(provider.cities)
            self._fakes[locale] = fake
        return RowContext(rng=self.rng, fake=self._fakes[locale], locale=locale)

    def render(self, template: str, ctx: RowContext, body: list[Piece] | None = None) -> list[Piece]:
        """Pieces of ``template`` with every placeholder filled (``{body}`` by ``body``)."""
        pieces: list[Piece] = []
        drawn: dict[str, set[str]] = {}
        for literal, field, _spec, _conv in parse_template(template):
            if literal:
                pieces.append(Piece(literal))
            if field == "body" and body is not None:
                pieces.extend(body)
            elif field:
                root = field_root(field)
                seen = drawn.setdefault(root, set())
                value = self._fill[root](ctx)
                # {step}, {step2} and {step3} are three different steps, not one step three times.
                for _ in range(_MAX_RETRIES):
                    if value not in seen:
                        break
                    value = self._fill[root](ctx)
                seen.add(value)
                pieces.append(Piece(value, value=True))
        return pieces

    def joined(self, templates: list[str], family: Family, ctx: RowContext) -> list[Piece]:
        """Pieces of ``templates`` rendered in order, one of the family's connectors between two."""
        pieces: list[Piece] = []
        for i, template in enumerate(templates):
            if i:
                pieces.append(Piece(self.rng.choice(family.connectors)))
            pieces.extend(self.render(template, ctx))
        return pieces

    def beside(self, templates: list[str], line: str) -> list[str]:
        """``line`` before or after ``templates``, either side as likely."""
        return [line, *templates] if self.rng.random() < 0.5 else [*templates, line]

    def single(self, family: Family, split: str, label: str, context_lines: tuple[str, ...] = ()) -> str:
        """One single-label message of ``label`` from ``family``; with the chance ``family.context``
        one of ``context_lines`` (``none`` lines: nobody's details, so the label stays the
        message's own) goes before or after it."""
        rng = self.rng
        ctx = self.context(family)
        templates = [rng.choice(family.pools[split][label])]
        if context_lines and rng.random() < family.context:
            # Everyday chat around a request or disclosure: the intent decides, not the first words
            # or the length of the message.
            templates = self.beside(templates, rng.choice(context_lines))
        return apply_style(self.joined(templates, family, ctx), rng.choice(family.styles), rng)

    def composed(
        self, family: Family, split: str, group: str, single: str, codes: tuple[str, ...]
    ) -> tuple[str, str]:
        """One multi-label message: clauses for ``group`` (``single`` names the category of a ``one``
        row), safe context, a frame around it all; returns the text and its category codes."""
        rng, pools = self.rng, family.pools[split]
        if group == "safe":
            templates = [rng.choice(pools["safe"])]
        elif group == "one":
            templates = [rng.choice(pools[single])]
        elif "multi" in pools and rng.random() < 0.4:
            templates = [rng.choice(pools["multi"])]
        else:
            k = rng.choices((2, 3, 4), weights=(0.75, 0.2, 0.05))[0]
            templates = [rng.choice(pools[code]) for code in rng.sample(codes, k)]
        if group != "safe" and rng.random() < family.context:
            # Harmless text around the values keeps the model from keying on length or layout alone.
            templates = self.beside(templates, rng.choice(pools["safe"]))
        ctx = self.context(family)
        body = self.joined(templates, family, ctx)
        if "frames" in pools:
            body = self.render(rng.choice(pools["frames"]), ctx, body=body)
        text = apply_style(body, rng.choice(family.styles), rng)
        return text, _codes(templates, codes)


def _codes(templates: list[str], order: tuple[str, ...]) -> str:
    found = {FIELD_CATEGORY[f] for t in templates for f in template_fields(t) if f in FIELD_CATEGORY}
    return ",".join(code for code in order if code in found)


def dedup_key(text: str) -> str:
    # Case, punctuation and emoji alone do not make a new message worth training on.
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def unique(make: Callable[[], T], key: Callable[[T], str], seen: set[str], retry: bool) -> T:
    """``make()`` again (a bounded number of times) while its key was seen before."""
    item = make()
    for _ in range(_MAX_RETRIES if retry else 0):
        if key(item) not in seen:
            break
        item = make()
    seen.add(key(item))
    return item


def quotas(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder counts per key, every key with a share present once ``n`` allows it."""
    total = sum(shares.values())
    exact = {k: n * s / total for k, s in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True):
        if sum(counts.values()) >= n:
            break
        counts[k] += 1
    wanted = [k for k, s in shares.items() if s > 0]
    if n >= len(wanted):
        for k in wanted:
            if counts[k] == 0:
                donor = max(counts, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[k] += 1
    return counts


def cycle(items: tuple[str, ...], rng: random.Random) -> Iterator[str]:
    """Endless shuffled rounds of ``items``: every item once per round, so counts stay balanced."""
    while True:
        yield from rng.sample(items, len(items))
