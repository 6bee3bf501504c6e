"""What every placeholder filler receives, apart from the fillers so value modules can share it."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from faker import Faker


@dataclass
class RowContext:
    """What a filler may use: the generator's random state and the Faker of the row's locale."""

    rng: random.Random
    fake: Faker
    locale: str


Filler = Callable[[RowContext], str]
