"""The stories of the synthetic task: a small world of people, items and events, and the computations they pose.

A story draws its numbers from a seeded RNG and builds every equivalent computation of its answer as
:class:`Step` trees (independent sub-computations, distributive alternatives), checking each value as it
goes: every value is a whole number in [2, MAX_VALUE], and a draw that breaks that is drawn again.
:mod:`reftkit.data.synthetic` turns them into problems, chains of thought and data sets.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

MAX_VALUE = 200
NAMES = ("Ann", "Ben", "Cal", "Dan", "Eva", "Max", "Mia", "Sam", "Tom", "Zoe")
ITEMS = ("pens", "apples", "cards", "books", "eggs", "cups", "balls", "shells")
# (verb, past participle for variable names, gerund phrase for N-CoT sentences)
GAINS = (
    ("buys", "bought", "buying more"),
    ("finds", "found", "finding more"),
    ("wins", "won", "winning more"),
)
LOSSES = (
    ("gives away", "given", "giving some away"),
    ("loses", "lost", "losing some"),
    ("sells", "sold", "selling some"),
)
# (verb, past participle, item) for the per-day rate story
ACTIVITIES = (
    ("saves", "saved", "coins"),
    ("picks", "picked", "apples"),
    ("bakes", "baked", "cakes"),
    ("makes", "made", "cards"),
    ("collects", "collected", "shells"),
)


@dataclass(frozen=True, eq=False)
class Num:
    """A number stated in the question. Identity equality: a number used twice is one variable."""

    value: int
    name: str


@dataclass(frozen=True, eq=False)
class Step:
    """One arithmetic step. ``says`` holds two N-CoT phrasings with ``{e}`` standing for ``3 * 4 = 12``."""

    op: str
    left: Num | Step
    right: Num | Step
    name: str
    says: tuple[str, str]
    value: int


class Rejected(Exception):
    """The random draw broke a constraint (inexact division, value out of range); draw again."""


def _apply(op: str, a: int, b: int) -> int:
    if op == "/" and a % b:
        raise Rejected
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    if not 2 <= value <= MAX_VALUE:
        raise Rejected
    return value


class StoryBuilder:
    """Collects a story's sentences and stated numbers, and checks every step's value as it is made."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.sentences: list[str] = []
        self.givens: list[Num] = []
        self._names: set[str] = set()

    def fresh(self, name: str) -> str:
        candidate, k = name, 2
        while candidate in self._names:
            candidate, k = f"{name}_{k}", k + 1
        self._names.add(candidate)
        return candidate

    def num(self, lo: int, hi: int, name: str) -> Num:
        """A new stated number; create them in the order the question mentions them."""
        if lo > hi:
            raise Rejected
        number = Num(self.rng.randint(lo, hi), self.fresh(name))
        self.givens.append(number)
        return number

    def divisor(self, value: int, hi: int, name: str) -> Num:
        """A stated number in [2, hi] that divides ``value`` and leaves a quotient of at least 2."""
        options = [d for d in range(2, hi + 1) if value % d == 0 and value // d >= 2]
        if not options:
            raise Rejected
        number = Num(self.rng.choice(options), self.fresh(name))
        self.givens.append(number)
        return number

    def step(
        self, op: str, left: Num | list[Step], right: Num | list[Step], name: str, says: tuple[str, str]
    ) -> list[Step]:
        """The step for every combination of the operands' alternative computations."""
        name = self.fresh(name)
        lefts = left if isinstance(left, list) else [left]
        rights = right if isinstance(right, list) else [right]
        return [Step(op, a, b, name, says, _apply(op, a.value, b.value)) for a in lefts for b in rights]

    def say(self, sentence: str) -> None:
        self.sentences.append(sentence)


def _value(quantity: Num | list[Step]) -> int:
    return quantity.value if isinstance(quantity, Num) else quantity[0].value


def _starting_amount(
    b: StoryBuilder,
    budget: int,
    items: str,
    low: int,
    *,
    plain: str,
    boxed: str,
    names: tuple[str, str, str],
    says: tuple[str, str],
) -> tuple[Num | list[Step], Num | None]:
    """A story's first amount, and the number per container when it comes in containers.

    With two operations left, half the time 2-6 containers of 2-9 items (one operation, which the caller
    counts); otherwise a plain ``low``-30 items. ``plain`` ({amount}) and ``boxed`` ({n}, {per}) are the
    question's sentence for either; ``names`` the container, per-container and product variables.
    """
    if budget >= 2 and b.rng.random() < 0.5:
        count, per = b.num(2, 6, names[0]), b.num(2, 9, names[1])
        b.say(boxed.format(n=count.value, per=per.value))
        return b.step("*", count, per, names[2], says), per
    amount = b.num(low, 30, items)
    b.say(plain.format(amount=amount.value))
    return amount, None


def _events_story(b: StoryBuilder, n_ops: int) -> list[Step]:
    """A person's items over a few events: buys (+), gives away (-), boxes (*), keeps one of n groups (/)."""
    who, items = b.rng.choice(NAMES), b.rng.choice(ITEMS)
    now = f"Now {who} has {{e}} {items}."
    total, per_box = _starting_amount(
        b, n_ops, items, 5,
        plain=f"{who} has {{amount}} {items}.",
        boxed=f"{who} has {{n}} boxes of {{per}} {items}.",
        names=("boxes", f"{items}_per_box", f"{items}_in_boxes"),
        says=(f"{who} has {{e}} {items}.", f"The boxes hold {{e}} {items}."),
    )  # fmt: skip
    budget = n_ops - (per_box is not None)
    while budget:
        value = _value(total)
        events = ["gain", "loss", "split"] + (["boxes"] if budget >= 2 else [])
        event = b.rng.choice(events)
        if event == "gain":
            verb, part, doing = b.rng.choice(GAINS)
            amount = b.num(2, 12, f"{items}_{part}")
            b.say(f"{who} {verb} {amount.value} {items}.")
            says = (f"{who} has {{e}} {items} after {doing}.", now)
            total = b.step("+", total, amount, f"{items}_after_{doing.split()[0]}", says)
        elif event == "loss":
            verb, part, doing = b.rng.choice(LOSSES)
            amount = b.num(2, min(12, value - 2), f"{items}_{part}")
            b.say(f"{who} {verb} {amount.value} {items}.")
            says = (f"{who} has {{e}} {items} after {doing}.", now)
            total = b.step("-", total, amount, f"{items}_after_{doing.split()[0]}", says)
        elif event == "split":
            groups = b.divisor(value, 6, "groups")
            b.say(f"{who} splits the {items} into {groups.value} equal groups and keeps one group.")
            says = (f"{who} keeps {{e}} {items}.", f"One group has {{e}} {items}.")
            total = b.step("/", total, groups, f"{items}_kept", says)
        else:
            boxes = b.num(2, 6, "new_boxes")
            if per_box is not None and b.rng.random() < 0.5:
                b.say(f"{who} buys {boxes.value} more boxes.")
            else:
                per_box = b.num(2, 9, f"{items}_per_box")
                b.say(f"{who} buys {boxes.value} boxes of {per_box.value} {items}.")
            says = (f"The new boxes hold {{e}} {items}.", f"{who} buys {{e}} {items} in boxes.")
            bought = b.step("*", boxes, per_box, f"{items}_in_new_boxes", says)
            says = (f"{who} has {{e}} {items} after buying the boxes.", now)
            total = b.step("+", total, bought, f"{items}_after_buying", says)
            budget -= 1
        budget -= 1
    b.say(f"How many {items} does {who} have now?")
    assert isinstance(total, list), "n_ops >= 1 makes the last value a step"
    return total


def _shop_story(b: StoryBuilder, n_ops: int) -> list[Step]:
    """A shop's stock: shelves (*), sales (-), deliveries (+, *), and packing into bags (/)."""
    items = b.rng.choice(ITEMS)
    now = f"Now the shop has {{e}} {items}."
    pack = b.rng.random() < 0.4
    stock, per_shelf = _starting_amount(
        b, n_ops - pack, items, 10,
        plain=f"A shop has {{amount}} {items}.",
        boxed=f"A shop has {{n}} shelves with {{per}} {items} on each shelf.",
        names=("shelves", f"{items}_per_shelf", f"{items}_on_shelves"),
        says=(f"The shelves hold {{e}} {items}.", f"The shop has {{e}} {items}."),
    )  # fmt: skip
    budget = n_ops - pack - (per_shelf is not None)
    while budget:
        value = _value(stock)
        events = ["sell", "restock"] + (["sell_bags", "boxes"] if budget >= 2 else [])
        event = b.rng.choice(events)
        if event == "sell":
            sold = b.num(2, min(12, value - 2), f"{items}_sold")
            b.say(f"The shop sells {sold.value} {items}.")
            says = (f"The shop has {{e}} {items} after selling some.", now)
            stock = b.step("-", stock, sold, f"{items}_left", says)
        elif event == "restock":
            got = b.num(2, 12, f"{items}_received")
            b.say(f"The shop gets {got.value} more {items}.")
            says = (f"The shop has {{e}} {items} after getting more.", now)
            stock = b.step("+", stock, got, f"{items}_after_delivery", says)
        elif event == "sell_bags":
            bags, per_bag = b.num(2, 6, "bags_sold"), b.num(2, 9, f"{items}_per_bag")
            b.say(f"The shop sells {bags.value} bags of {per_bag.value} {items}.")
            says = (f"The bags hold {{e}} {items}.", f"The shop sells {{e}} {items} in bags.")
            sold_bags = b.step("*", bags, per_bag, f"{items}_in_bags", says)
            says = (f"The shop has {{e}} {items} left.", now)
            stock = b.step("-", stock, sold_bags, f"{items}_left", says)
            budget -= 1
        else:
            boxes, per_box = b.num(2, 6, "boxes"), b.num(2, 9, f"{items}_per_box")
            b.say(f"The shop gets {boxes.value} boxes of {per_box.value} {items}.")
            says = (f"The boxes hold {{e}} {items}.", f"The shop gets {{e}} {items} in boxes.")
            delivered = b.step("*", boxes, per_box, f"{items}_in_boxes", says)
            says = (f"The shop has {{e}} {items} after that.", now)
            stock = b.step("+", stock, delivered, f"{items}_after_delivery", says)
            budget -= 1
        budget -= 1
    if pack:
        bag_size = b.divisor(_value(stock), 9, "bag_size")
        b.say(f"The shop packs the {items} into bags of {bag_size.value}.")
        b.say("How many bags does the shop fill?")
        return b.step("/", stock, bag_size, "bags", ("The shop fills {e} bags.", "There are {e} bags."))
    b.say(f"How many {items} does the shop have now?")
    assert isinstance(stock, list), "n_ops >= 1 makes the last value a step"
    return stock


def _person(b: StoryBuilder, who: str, items: str, n_ops: int) -> Num | list[Step]:
    """One person's amount in one sentence, made with 0, 1 or 2 operations."""
    p = who.lower()
    form = b.rng.choice(["plain", "buys", "gives"] if n_ops == 1 else ["buys", "gives"])
    if n_ops == 0:
        amount = b.num(5, 30, f"{p}_{items}")
        b.say(f"{who} has {amount.value} {items}.")
        return amount
    if n_ops == 2 or form == "plain":
        boxes, per_box = b.num(2, 6, f"{p}_boxes"), b.num(2, 9, f"{p}_per_box")
        start = f"{who} has {boxes.value} boxes of {per_box.value} {items}"
        says = (f"{who} has {{e}} {items}.", f"{who} has {{e}} {items} in boxes.")
        amount: Num | list[Step] = b.step("*", boxes, per_box, f"{p}_{items}", says)
    else:
        amount = b.num(5, 30, f"{p}_{items}")
        start = f"{who} has {amount.value} {items}"
    if form == "plain":
        b.say(start + ".")
        return amount
    if form == "buys":
        extra = b.num(2, 12, f"{p}_bought")
        b.say(f"{start} and buys {extra.value} more.")
        says = (f"{who} has {{e}} {items} after buying more.", f"Then {who} has {{e}} {items}.")
        return b.step("+", amount, extra, f"{p}_total", says)
    extra = b.num(2, min(12, _value(amount) - 2), f"{p}_given")
    b.say(f"{start} and gives away {extra.value}.")
    says = (f"{who} has {{e}} {items} after giving some away.", f"Then {who} has {{e}} {items}.")
    return b.step("-", amount, extra, f"{p}_left", says)


def _pair_story(b: StoryBuilder, n_ops: int) -> list[Step]:
    """Two people's amounts, computed independently, then combined (+ or -) and maybe shared (/)."""
    first, second = b.rng.sample(NAMES, 2)
    items = b.rng.choice(ITEMS)
    together = (f"Together they have {{e}} {items}.", f"They have {{e}} {items} in all.")
    if n_ops in (2, 3) and b.rng.random() < 0.3:
        share = n_ops == 3
        boxes_a, boxes_b = b.num(2, 9, f"{first.lower()}_boxes"), b.num(2, 9, f"{second.lower()}_boxes")
        per_box = b.num(2, 9, f"{items}_per_box")
        b.say(f"{first} has {boxes_a.value} boxes of {items}. {second} has {boxes_b.value} boxes of {items}.")
        b.say(f"Each box has {per_box.value} {items}.")
        says = ("Together they have {e} boxes.", "They have {e} boxes in all.")
        all_boxes = b.step("+", boxes_a, boxes_b, "boxes", says)
        by_boxes = b.step("*", all_boxes, per_box, f"{items}_together", together)
        says = (f"{first} has {{e}} {items}.", f"The boxes of {first} hold {{e}} {items}.")
        items_a = b.step("*", boxes_a, per_box, f"{first.lower()}_{items}", says)
        says = (f"{second} has {{e}} {items}.", f"The boxes of {second} hold {{e}} {items}.")
        items_b = b.step("*", boxes_b, per_box, f"{second.lower()}_{items}", says)
        total = by_boxes + b.step("+", items_a, items_b, f"all_{items}", together)
    else:
        share = n_ops >= 2 and b.rng.random() < 0.5
        rest = n_ops - 1 - share
        ops_a = b.rng.choice([k for k in range(3) if 0 <= rest - k <= 2])
        amount_a = _person(b, first, items, ops_a)
        amount_b = _person(b, second, items, rest - ops_a)
        if share or b.rng.random() < 0.5:
            total = b.step("+", amount_a, amount_b, f"{items}_together", together)
        else:
            (big, more), (small, less) = sorted(
                [(first, amount_a), (second, amount_b)], key=lambda pair: -_value(pair[1])
            )
            b.say(f"How many more {items} does {big} have than {small}?")
            says = (f"{big} has {{e}} more {items} than {small}.", f"The difference is {{e}} {items}.")
            return b.step("-", more, less, "difference", says)
    if share:
        friends = b.divisor(_value(total), 6, "friends")
        b.say(f"They share the {items} equally among {friends.value} friends.")
        b.say(f"How many {items} does each friend get?")
        says = (f"Each friend gets {{e}} {items}.", f"One share is {{e}} {items}.")
        return b.step("/", total, friends, f"{items}_each", says)
    b.say(f"How many {items} do they have together?")
    return total


def _rate_story(b: StoryBuilder, n_ops: int) -> list[Step]:
    """A per-day rate over days (*), maybe split into morning and evening, plus a start, a gift, or bags."""
    who = b.rng.choice(NAMES)
    verb, part, items = b.rng.choice(ACTIVITIES)
    now = f"Now {who} has {{e}} {items}."
    split = n_ops >= 2 and b.rng.random() < 0.5
    extras = b.rng.sample(["start", "give", "bags"], n_ops - 1 - split)
    start = None
    if "start" in extras:
        start = b.num(5, 30, f"{items}_start")
        b.say(f"{who} has {start.value} {items}.")
    if split:
        morning, evening = b.num(2, 9, "per_morning"), b.num(2, 9, "per_evening")
        days = b.num(2, 9, "days")
        b.say(
            f"{who} {verb} {morning.value} {items} each morning and {evening.value} {items} each evening"
            f" for {days.value} days."
        )
        says = (f"{who} {verb} {{e}} {items} each day.", f"Each day gives {{e}} {items}.")
        per_day = b.step("+", morning, evening, f"{items}_per_day", says)
        in_days = (f"In {days.value} days {who} {verb} {{e}} {items}.", f"{who} {verb} {{e}} {items} in all.")
        by_day = b.step("*", per_day, days, f"{items}_{part}", in_days)
        says = (f"{who} {verb} {{e}} {items} in the mornings.", f"The mornings give {{e}} {items}.")
        mornings = b.step("*", morning, days, f"{items}_mornings", says)
        says = (f"{who} {verb} {{e}} {items} in the evenings.", f"The evenings give {{e}} {items}.")
        evenings = b.step("*", evening, days, f"{items}_evenings", says)
        made = by_day + b.step("+", mornings, evenings, f"{items}_{part}", in_days)
    else:
        rate, days = b.num(2, 12, f"{items}_per_day"), b.num(2, 9, "days")
        b.say(f"{who} {verb} {rate.value} {items} each day for {days.value} days.")
        in_days = (f"In {days.value} days {who} {verb} {{e}} {items}.", f"{who} {verb} {{e}} {items} in all.")
        made = b.step("*", rate, days, f"{items}_{part}", in_days)
    total = made
    if start is not None:
        says = (f"{who} has {{e}} {items} in all.", now)
        total = b.step("+", start, made, f"{items}_total", says)
    if "give" in extras:
        given = b.num(2, min(12, _value(total) - 2), f"{items}_given")
        b.say(f"Then {who} gives away {given.value} {items}.")
        says = (f"{who} has {{e}} {items} after giving some away.", now)
        total = b.step("-", total, given, f"{items}_left", says)
    if "bags" in extras:
        bag_size = b.divisor(_value(total), 9, "bag_size")
        b.say(f"Then {who} puts the {items} into bags of {bag_size.value}.")
        b.say(f"How many bags does {who} fill?")
        return b.step("/", total, bag_size, "bags", (f"{who} fills {{e}} bags.", "There are {e} bags."))
    b.say(f"How many {items} does {who} have now?")
    return total


STORIES: dict[str, Callable[[StoryBuilder, int], list[Step]]] = {
    "events": _events_story,
    "shop": _shop_story,
    "pair": _pair_story,
    "rate": _rate_story,
}
