"""Synthetic multi-step arithmetic word problems: the default task, learnable from scratch in minutes.

Real datasets need a pretrained model. These problems keep what ReFT relies on (a checkable integer
answer, 2-4 chained operations, stories whose numbers must be combined in the right way) but use a
vocabulary of a few dozen words and small numbers (operands 2-12, starting amounts up to 30, every
value a whole number in [2, 200]), so a tiny transformer trained from scratch learns them quickly.

Each question admits several correct chains of thought: independent sub-computations in either order,
descriptive or short variable names, all numbers first or each just before its use, two phrasings of
every N-CoT sentence, and for some stories a distributive alternative (``(3 + 2) * 6`` vs
``3 * 6 + 2 * 6``). :func:`cot_variants` renders several of them; like the paper, the dataset gives
each question one gold annotation, drawn from the same renderer with a seeded RNG.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from reftkit.data.base import COT_STYLES, Problem, TaskData
from reftkit.reward.programs import program_header

MAX_VALUE = 200
MAX_OPS = 4
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
SHORT_GIVENS = "abcdefgh"
SHORT_STEPS = "xyzwuv"


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


@dataclass(frozen=True)
class ProblemSpec:
    """A question with its equivalent computations; the first follows the question's own order."""

    kind: str
    question: str
    givens: tuple[Num, ...]
    solutions: tuple[Step, ...]

    @property
    def answer(self) -> str:
        return str(self.solutions[0].value)

    @property
    def n_ops(self) -> int:
        return len(_order(self.solutions[0], flip=lambda: False))


class _Reject(Exception):
    """The random draw broke a constraint (inexact division, value out of range); draw again."""


def _apply(op: str, a: int, b: int) -> int:
    if op == "/" and a % b:
        raise _Reject
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    if not 2 <= value <= MAX_VALUE:
        raise _Reject
    return value


class _Builder:
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
            raise _Reject
        number = Num(self.rng.randint(lo, hi), self.fresh(name))
        self.givens.append(number)
        return number

    def divisor(self, value: int, hi: int, name: str) -> Num:
        """A stated number in [2, hi] that divides ``value`` and leaves a quotient of at least 2."""
        options = [d for d in range(2, hi + 1) if value % d == 0 and value // d >= 2]
        if not options:
            raise _Reject
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


def _events_story(b: _Builder, n_ops: int) -> list[Step]:
    """A person's items over a few events: buys (+), gives away (-), boxes (*), keeps one of n groups (/)."""
    who, items = b.rng.choice(NAMES), b.rng.choice(ITEMS)
    now = f"Now {who} has {{e}} {items}."
    budget = n_ops
    per_box: Num | None = None
    total: Num | list[Step]
    if budget >= 2 and b.rng.random() < 0.5:
        boxes, per_box = b.num(2, 6, "boxes"), b.num(2, 9, f"{items}_per_box")
        b.say(f"{who} has {boxes.value} boxes of {per_box.value} {items}.")
        says = (f"{who} has {{e}} {items}.", f"The boxes hold {{e}} {items}.")
        total = b.step("*", boxes, per_box, f"{items}_in_boxes", says)
        budget -= 1
    else:
        total = b.num(5, 30, items)
        b.say(f"{who} has {total.value} {items}.")
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


def _shop_story(b: _Builder, n_ops: int) -> list[Step]:
    """A shop's stock: shelves (*), sales (-), deliveries (+, *), and packing into bags (/)."""
    items = b.rng.choice(ITEMS)
    now = f"Now the shop has {{e}} {items}."
    pack = b.rng.random() < 0.4
    budget = n_ops - pack
    stock: Num | list[Step]
    if budget >= 2 and b.rng.random() < 0.5:
        shelves, per_shelf = b.num(2, 6, "shelves"), b.num(2, 9, f"{items}_per_shelf")
        b.say(f"A shop has {shelves.value} shelves with {per_shelf.value} {items} on each shelf.")
        says = (f"The shelves hold {{e}} {items}.", f"The shop has {{e}} {items}.")
        stock = b.step("*", shelves, per_shelf, f"{items}_on_shelves", says)
        budget -= 1
    else:
        stock = b.num(10, 30, items)
        b.say(f"A shop has {stock.value} {items}.")
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


def _person(b: _Builder, who: str, items: str, n_ops: int) -> Num | list[Step]:
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


def _pair_story(b: _Builder, n_ops: int) -> list[Step]:
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


def _rate_story(b: _Builder, n_ops: int) -> list[Step]:
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


STORIES: dict[str, Callable[[_Builder, int], list[Step]]] = {
    "events": _events_story,
    "shop": _shop_story,
    "pair": _pair_story,
    "rate": _rate_story,
}


def make_problem(rng: random.Random, n_ops: int | None = None) -> ProblemSpec:
    """One random problem with ``n_ops`` operations (2 to MAX_OPS at random when not given)."""
    if n_ops is None:
        n_ops = rng.randint(2, MAX_OPS)
    if not 1 <= n_ops <= MAX_OPS:
        raise ValueError(f"n_ops must be in 1..{MAX_OPS}, got {n_ops}")
    while True:
        kind = rng.choice(list(STORIES))
        builder = _Builder(rng)
        try:
            solutions = STORIES[kind](builder, n_ops)
        except _Reject:
            continue
        return ProblemSpec(kind, " ".join(builder.sentences), tuple(builder.givens), tuple(solutions))


def _order(root: Step, flip: Callable[[], bool]) -> list[Step]:
    """The steps in a valid computation order: operands first, the two branches swapped where ``flip``."""
    steps: list[Step] = []

    def visit(node: Num | Step) -> None:
        if isinstance(node, Num) or node in steps:
            return
        first, second = (node.right, node.left) if flip() else (node.left, node.right)
        visit(first)
        visit(second)
        steps.append(node)

    visit(root)
    return steps


def _program(spec: ProblemSpec, steps: list[Step], short: bool, givens_first: bool) -> str:
    """A P-CoT program computing ``steps``; the last one is assigned to ``result``."""
    names: dict[Num | Step, str] = {}
    lines: list[str] = []

    def define(number: Num) -> None:
        if number not in names:
            index = sum(isinstance(node, Num) for node in names)
            names[number] = SHORT_GIVENS[index] if short else number.name
            lines.append(f"{names[number]} = {number.value}")

    if givens_first:
        for number in spec.givens:
            define(number)
    for i, step in enumerate(steps):
        for operand in (step.left, step.right):
            if isinstance(operand, Num):
                define(operand)
        expr = f"{names[step.left]} {step.op} {names[step.right]}"
        if i == len(steps) - 1:
            lines.append(f"result = {expr}")
        else:
            names[step] = SHORT_STEPS[i] if short else step.name
            lines.append(f"{names[step]} = {expr}")
    lines.append("return result")
    return program_header(spec.question) + "\n".join("    " + line for line in lines)


def _nl(steps: list[Step], phrasing: int) -> str:
    """An N-CoT: one sentence per step showing its arithmetic, without the final answer trigger."""
    return " ".join(s.says[phrasing].format(e=f"{s.left.value} {s.op} {s.right.value} = {s.value}") for s in steps)


def render_cot(spec: ProblemSpec, cot: str, rng: random.Random) -> str:
    """One correct chain of thought for ``spec``, with every free choice drawn from ``rng``."""
    if cot not in COT_STYLES:
        raise ValueError(f"cot must be one of {COT_STYLES}, got {cot!r}")
    root = rng.choice(spec.solutions)
    steps = _order(root, flip=lambda: rng.random() < 0.5)
    if cot == "nl":
        return _nl(steps, rng.randrange(2))
    return _program(spec, steps, short=rng.random() < 0.5, givens_first=rng.random() < 0.5)


def cot_variants(spec: ProblemSpec, cot: str, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct correct chains of thought for ``spec`` (fewer if it has fewer)."""
    rng = random.Random(seed)
    variants: dict[str, None] = {}
    for _ in range(20 * n):
        variants[render_cot(spec, cot, rng)] = None
        if len(variants) == n:
            break
    return list(variants)


def generate_specs(n: int, seed: int, min_ops: int = 2, max_ops: int = 4) -> list[ProblemSpec]:
    """``n`` problems with distinct questions; operation counts cycle through min_ops..max_ops."""
    if not 1 <= min_ops <= max_ops <= MAX_OPS:
        raise ValueError(f"need 1 <= min_ops <= max_ops <= {MAX_OPS}, got {min_ops}, {max_ops}")
    rng = random.Random(seed)
    specs: list[ProblemSpec] = []
    seen: set[str] = set()
    while len(specs) < n:
        spec = make_problem(rng, min_ops + len(specs) % (max_ops - min_ops + 1))
        if spec.question not in seen:
            seen.add(spec.question)
            specs.append(spec)
    return specs


def generate(n: int, seed: int, cot: str, min_ops: int = 2, max_ops: int = 4) -> list[Problem]:
    """``n`` problems with one gold annotation each; the questions do not depend on ``cot``."""
    if cot not in COT_STYLES:
        raise ValueError(f"cot must be one of {COT_STYLES}, got {cot!r}")
    cot_rng = random.Random(f"synthetic-{cot}-{seed}")
    return [
        Problem(f"synth-{seed}-{i}", spec.question, spec.answer, render_cot(spec, cot, cot_rng))
        for i, spec in enumerate(generate_specs(n, seed, min_ops, max_ops))
    ]


def load_synthetic(
    cot: str = "python",
    n_train: int = 2000,
    n_val: int = 200,
    n_test: int = 500,
    seed: int = 0,
    min_ops: int = 2,
    max_ops: int = 4,
) -> TaskData:
    """Train/val/test splits of one pool of distinct questions, so no test question is in train."""
    problems = generate(n_train + n_val + n_test, seed, cot, min_ops, max_ops)
    return TaskData(
        name="synthetic",
        train=problems[:n_train],
        val=problems[n_train : n_train + n_val],
        test=problems[n_train + n_val :],
    )
