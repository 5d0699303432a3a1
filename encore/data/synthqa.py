"""synthqa: seeded, offline, SQuAD-2-style extractive question answering over fictional worlds.

Each example is a small invented world (people, cities, companies, linked to each other) written out as
a multi-paragraph context (usually 1,200-3,000 characters), one question and a short answer (1-5 words)
that is an exact span of the context, or the literal `unanswerable` for about a third of the questions
(SQuAD 2.0 has a third too). The source uses the squad_v2 template of `encore.data.tasks`:

    question: When was Tomas Ferreira born? context: Tomas Ferreira was born in Kelvaro in 1962. ...

Not a lookup: every context holds several entities of each kind, so the same attribute ("born in
<year>") appears several times and the question's entity picks the one; facts are phrased with several
templates; and the unanswerable questions are near misses: an attribute that other entities in the
context have but the asked one does not, or an entity of the right kind that the context never
mentions. Names of places and companies are made of random syllables, so answers must be copied
from the context, not remembered.

Determinism: example i of split s is drawn from random.Random(sha256(f"{seed}/{s}/{i}")), so any
example can be made alone, a split is the same on every machine, and splits do not share examples.
Sizes (default): train 20,000, validation 1,000, test 1,000; `size=` changes one split's size.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

SPLITS = {"train": 20_000, "validation": 1_000, "test": 1_000}
UNANSWERABLE = "unanswerable"
P_UNANSWERABLE = 1 / 3

# --- vocabularies ------------------------------------------------------------------------------------

FIRST = (
    "Ada Aaron Amara Anton Bea Bruno Carla Cyrus Dalia Dmitri Edith Elias Farah Felix Greta Gideon Hana Hugo "
    "Ines Ivo Jana Jonas Kira Lars Lena Lukas Maya Milo Nadia Nico Olga Omar Petra Pavel Rosa Rafael Sofia "
    "Samir Talia Tomas Uma Viktor Vera Walter Wanda Xavier Yara Yusuf Zora Zeno Ilse Marek Noor Oskar Freya"
).split()
LAST = (
    "Abara Bellini Castell Dorsey Ekwueme Ferreira Galloway Halvorsen Ibarra Jansen Kowalski Lindqvist Moreau "
    "Nakamura Okafor Petrov Quist Rahman Sandoval Takahashi Ueda Varga Whitlock Xu Yilmaz Zelenko Arkwright "
    "Brandt Carvalho Dunmore Eriksen Falk Grummond Holloway Iversen Kessler Larkin Mbeki Novak Ostrowski "
    "Pellegrini Rourke Sorensen Thorne Urquhart Vasquez Winslow Aldana Becker Crane Duval Esposito Fontaine"
).split()
PROFESSIONS = (
    "architect", "botanist", "cartographer", "chemist", "composer", "economist", "engineer", "geologist",
    "historian", "journalist", "lawyer", "linguist", "mathematician", "painter", "pharmacist", "photographer",
    "physician", "poet", "sculptor", "surveyor", "violinist", "marine biologist", "civil engineer",
    "stage designer", "ship captain", "watchmaker", "glassblower", "astronomer", "librarian", "pilot",
)  # fmt: skip
PRODUCTS = (
    "bicycles", "ceramic tiles", "pianos", "wind turbines", "fishing nets", "telescopes", "paper lanterns",
    "railway signals", "hearing aids", "sailcloth", "water pumps", "typewriters", "wool blankets", "microscopes",
    "garden tools", "glass bottles", "solar panels", "leather boots", "maps", "clocks", "canned fish", "kites",
)  # fmt: skip
INDUSTRIES = (
    "textile", "shipbuilding", "printing", "glassmaking", "brewing", "mining", "tanning", "clockmaking",
    "fishing", "silk", "salt", "timber", "pottery", "paper", "wine", "tea", "furniture", "steel",
)  # fmt: skip
AWARDS_A = ("Golden", "Silver", "Royal", "Northern", "Crystal", "Laurel", "Iron", "Blue")
AWARDS_B = ("Compass", "Quill", "Medal", "Star", "Lantern", "Anchor", "Key", "Ribbon")
TITLE_ADJ = ("Silent", "Last", "Hidden", "Broken", "Distant", "Quiet", "Long", "Burning", "Lost", "Second")
TITLE_NOUN = ("Harbor", "Winter", "Orchard", "Lighthouse", "River", "Garden", "Voyage", "Mirror", "Bridge", "Map")
ONSETS = ("b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "z")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou")
CODAS = ("", "", "", "n", "r", "l", "s", "m", "nd", "rt", "st", "th", "x")
CITY_ENDS = ("", "", "ford", "holm", "burg", "haven", "mouth", "dale", "stad", "ville", "port", "wick")
COMPANY_ENDS = ("Works", "Industries", "Company", "Group", "Manufacturing", "Holdings", "& Sons", "Labs")

# filler: sentences that lengthen a paragraph with no askable fact, so answers sit among distractors
FILLER = {
    "person": (
        "Friends remember {p} as patient and stubborn in equal measure.",
        "{p} kept detailed notebooks, most of which are still unpublished.",
        "Colleagues often described {p} as generous with time and advice.",
        "Much of {p}'s early life is known only from letters.",
        "{p} rarely gave interviews and disliked being photographed.",
        "In later years {p} spent long summers by the sea.",
    ),
    "city": (
        "The old market square of {c} fills with stalls every Saturday.",
        "Winters in {c} are long, and the harbor sometimes freezes.",
        "Visitors to {c} often remark on its narrow, winding streets.",
        "A tram line connects the center of {c} with the outer districts.",
        "Most of the buildings in the historic center of {c} date from the last two centuries.",
        "{c} holds a music festival each autumn that draws visitors from the whole region.",
    ),
    "company": (
        "{o} has changed its logo several times over the years.",
        "Much of the work at {o} is still done by hand.",
        "{o} publishes a short annual report for its customers.",
        "The early years of {o} were marked by money troubles.",
        "Competitors have often tried to copy the designs of {o}.",
        "{o} sponsors a local football club and a youth orchestra.",
    ),
}


def _name_word(rng: random.Random, syllables: int) -> str:
    word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(syllables))
    return word.capitalize()


# --- the world ---------------------------------------------------------------------------------------


@dataclass
class Entity:
    kind: str  # person / city / company
    name: str
    facts: dict[str, str] = field(default_factory=dict)  # attribute -> value exactly as it is written


# attribute -> (sentence templates, question templates); {e} is the entity, {v} the value, {a} its article
PERSON_ATTRS = {
    "birth_year": (
        ("{e} was born in {v}.", "Born in {v}, {e} grew up in a large family.", "{e}'s life began in {v}."),
        ("In what year was {e} born?", "When was {e} born?", "What year was {e} born in?"),
    ),
    "birthplace": (
        ("{e} was born in the city of {v}.", "{e} came from {v}.", "{e} spent a childhood in {v}."),
        ("Where was {e} born?", "Which city did {e} come from?", "In which city was {e} born?"),
    ),
    "profession": (
        ("{e} worked as {a} {v} for most of a long career.", "By training, {e} was {a} {v}.", "{e} became {a} {v}."),
        ("What was {e}'s profession?", "What did {e} work as?", "What was {e} by training?"),
    ),
    "employer": (
        ("{e} later joined {v}.", "For many years {e} was employed by {v}.", "{e} took a position at {v}."),
        ("Which company did {e} join?", "Who employed {e}?", "At which company did {e} work?"),
    ),
    "award": (
        ("{e} received the {v}.", "The {v} was awarded to {e}.", "{e} was honored with the {v}."),
        ("Which award did {e} receive?", "What honor was given to {e}?", "What prize did {e} win?"),
    ),
    "book": (
        ("{e} is best known for the book {v}.", "{e} wrote {v}.", "The book {v} made {e} famous."),
        ("What book is {e} best known for?", "Which book did {e} write?", "What is the title of {e}'s book?"),
    ),
}
CITY_ATTRS = {
    "population": (
        ("{e} has a population of about {v}.", "About {v} people live in {e}.", "{e} is home to roughly {v} people."),
        ("What is the population of {e}?", "How many people live in {e}?", "How many inhabitants does {e} have?"),
    ),
    "river": (
        ("{e} lies on the {v}.", "The {v} runs through {e}.", "{e} grew up along the banks of the {v}."),
        ("On which river does {e} lie?", "Which river runs through {e}?", "What river flows through {e}?"),
    ),
    "founded": (
        ("{e} was founded in {v}.", "Settlers founded {e} in {v}.", "The town charter of {e} dates from {v}."),
        ("When was {e} founded?", "In what year was {e} founded?", "What year was {e} established?"),
    ),
    "mayor": (
        ("The current mayor of {e} is {v}.", "{v} serves as mayor of {e}.", "{e} is governed by mayor {v}."),
        ("Who is the mayor of {e}?", "Who serves as mayor of {e}?", "Who governs {e} as mayor?"),
    ),
    "industry": (
        ("{e} is known for its {v} industry.", "The {v} trade made {e} wealthy.", "{e} grew rich on {v}."),
        ("What industry is {e} known for?", "Which trade made {e} wealthy?", "What is {e}'s main industry?"),
    ),
}
COMPANY_ATTRS = {
    "founded": (
        ("{e} was established in {v}.", "{e} opened its doors in {v}.", "The history of {e} begins in {v}."),
        ("When was {e} established?", "In what year was {e} founded?", "What year did {e} open?"),
    ),
    "founder": (
        ("{e} was founded by {v}.", "{v} started {e} with a small loan.", "{v} is the founder of {e}."),
        ("Who founded {e}?", "Who started {e}?", "Who is the founder of {e}?"),
    ),
    "headquarters": (
        ("{e} has its headquarters in {v}.", "{e} is based in {v}.", "The main offices of {e} are in {v}."),
        ("Where is {e} based?", "In which city does {e} have its headquarters?", "Where are {e}'s main offices?"),
    ),
    "product": (
        ("{e} makes {v}.", "{e} is best known for its {v}.", "Its {v} made {e} famous."),
        ("What does {e} make?", "What product is {e} known for?", "What does {e} manufacture?"),
    ),
    "employees": (
        ("{e} employs about {v} people.", "Some {v} people work for {e}.", "{e} has a staff of roughly {v}."),
        ("How many people does {e} employ?", "How many people work for {e}?", "How large is {e}'s staff?"),
    ),
}
ATTRS = {"person": PERSON_ATTRS, "city": CITY_ATTRS, "company": COMPANY_ATTRS}


class _World:
    """Entities of one example, with unique names; values may name other entities of the world."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _unique(self, make) -> str:
        for _ in range(100):
            name = make()
            if name not in self.used and not any(name in u or u in name for u in self.used):
                self.used.add(name)
                return name
        raise RuntimeError("could not draw a unique name")  # not reached with these vocabularies

    def person_name(self) -> str:
        return self._unique(lambda: f"{self.rng.choice(FIRST)} {self.rng.choice(LAST)}")

    def city_name(self) -> str:
        return self._unique(lambda: _name_word(self.rng, self.rng.choice((2, 2, 3))) + self.rng.choice(CITY_ENDS))

    def company_name(self) -> str:
        return self._unique(lambda: f"{_name_word(self.rng, 2)} {self.rng.choice(COMPANY_ENDS)}")

    def river_name(self) -> str:
        return self._unique(lambda: f"{_name_word(self.rng, 2)} River")

    def value(self, kind: str, attr: str, world: dict[str, list[Entity]]) -> str:
        r = self.rng
        other = lambda k: r.choice(world[k]).name if world[k] else None  # links entities to each other
        match kind, attr:
            case ("person", "birth_year"):
                return str(r.randint(1890, 1995))
            case ("person", "birthplace"):
                return other("city") or self.city_name()
            case ("person", "profession"):
                return r.choice(PROFESSIONS)
            case ("person", "employer"):
                return other("company") or self.company_name()
            case ("person", "award"):
                return self._unique(lambda: f"{r.choice(AWARDS_A)} {r.choice(AWARDS_B)}")
            case ("person", "book"):
                return self._unique(lambda: f"The {r.choice(TITLE_ADJ)} {r.choice(TITLE_NOUN)}")
            case ("city", "population"):
                return f"{r.randint(2, 900) * 1000 + r.randint(0, 9) * 100:,}"
            case ("city", "river"):
                return self.river_name()
            case ("city" | "company", "founded"):
                return str(r.randint(1100, 1890) if kind == "city" else r.randint(1850, 2015))
            case ("city", "mayor") | ("company", "founder"):
                return self.person_name()
            case ("city", "industry"):
                return r.choice(INDUSTRIES)
            case ("company", "headquarters"):
                return other("city") or self.city_name()
            case ("company", "product"):
                return r.choice(PRODUCTS)
            case ("company", "employees"):
                return f"{r.choice((r.randint(12, 990), r.randint(1, 60) * 100 + r.randint(0, 9) * 10)):,}"
        raise KeyError((kind, attr))


@dataclass
class Example:
    context: str
    question: str
    answer: str  # a span of context, or UNANSWERABLE
    kind: str  # "answerable", "missing_attribute" or "absent_entity"

    @property
    def source(self) -> str:
        return f"question: {self.question} context: {self.context}"

    @property
    def target(self) -> str:
        return self.answer


def _seed(seed: int, split: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"synthqa/{seed}/{split}/{index}".encode()).digest()[:8], "big")


def generate_example(split: str, index: int, seed: int = 0, max_entities: int | None = None) -> Example:
    """Example `index` of `split` (any name: a new name is a new, disjoint stream). `max_entities` caps
    the cities and companies per world at that number and the people at max(2, that number): shorter
    contexts (~4 paragraphs at 1) for quick experiments. The random draws are the same either way."""
    rng = random.Random(_seed(seed, split, index))
    w = _World(rng)
    world: dict[str, list[Entity]] = {"person": [], "city": [], "company": []}

    # cities and companies first, so that people can be born in / work for them
    def cap(n: int, floor: int = 1) -> int:
        return n if max_entities is None else min(n, max(floor, max_entities))

    for kind, n, make in (("city", rng.randint(1, 3), w.city_name), ("company", rng.randint(1, 2), w.company_name)):
        world[kind] = [Entity(kind, make()) for _ in range(cap(n))]
    world["person"] = [Entity("person", w.person_name()) for _ in range(cap(rng.randint(2, 4), 2))]
    for kind, entities in world.items():
        attrs = list(ATTRS[kind])
        for e in entities:
            # each entity states most, never all, of its attributes: the others are unanswerable near misses
            for attr in rng.sample(attrs, rng.randint(len(attrs) - 3, len(attrs) - 1)):
                e.facts[attr] = w.value(kind, attr, world)

    paragraphs = [_paragraph(e, rng) for kind in ("city", "company", "person") for e in world[kind]]
    rng.shuffle(paragraphs)
    context = "\n\n".join(paragraphs)
    entities = [e for es in world.values() for e in es]

    if rng.random() >= P_UNANSWERABLE:
        e = rng.choice(entities)
        attr = rng.choice(sorted(e.facts))
        question, answer, kind = _question(e, attr, rng), e.facts[attr], "answerable"
    elif rng.random() < 0.5:
        # an attribute this entity lacks but another entity of the same kind has (a plausible answer exists)
        options = [
            (e, a)
            for e in entities
            for a in ATTRS[e.kind]
            if a not in e.facts and any(a in o.facts for o in world[e.kind] if o is not e)
        ] or [(e, a) for e in entities for a in ATTRS[e.kind] if a not in e.facts]
        e, attr = rng.choice(options)
        question, answer, kind = _question(e, attr, rng), UNANSWERABLE, "missing_attribute"
    else:
        # an entity of a kind the context has, asked about an attribute the context states for that kind
        e = rng.choice(entities)
        make = {"person": w.person_name, "city": w.city_name, "company": w.company_name}[e.kind]
        ghost = Entity(e.kind, make())
        while ghost.name in context:  # a fresh name that happens to occur inside the text would be answerable
            ghost = Entity(e.kind, make())
        attr = rng.choice(sorted({a for o in world[e.kind] for a in o.facts}))
        question, answer, kind = _question(ghost, attr, rng), UNANSWERABLE, "absent_entity"
    return Example(context, question, answer, kind)


def _paragraph(e: Entity, rng: random.Random) -> str:
    templates = ATTRS[e.kind]
    sentences = [
        rng.choice(templates[attr][0]).format(e=e.name, v=value, a="an" if value[0] in "aeiou" else "a")
        for attr, value in e.facts.items()
    ]
    slot = {"person": "p", "city": "c", "company": "o"}[e.kind]
    sentences += [s.format(**{slot: e.name}) for s in rng.sample(FILLER[e.kind], rng.randint(1, 3))]
    rng.shuffle(sentences)
    # open with a sentence that starts with the entity's name, as a real text would
    intro = next((i for i, s in enumerate(sentences) if s.startswith(e.name)), 0)
    sentences.insert(0, sentences.pop(intro))
    return " ".join(sentences)


def _question(e: Entity, attr: str, rng: random.Random) -> str:
    return rng.choice(ATTRS[e.kind][attr][1]).format(e=e.name)


def load(
    split: str = "train", *, size: int | None = None, seed: int = 0, max_entities: int | None = None
) -> Iterator[dict]:
    """{"source", "target"} for each example of a split; `size` overrides the split's default size;
    `max_entities` makes smaller worlds (see `generate_example`)."""
    if split not in SPLITS:
        raise ValueError(f"synthqa has no split {split!r}; splits: {', '.join(SPLITS)}")
    n = SPLITS[split] if size is None else size
    if n < 0:
        raise ValueError(f"synthqa: size must be >= 0, got {size}")
    if max_entities is not None and max_entities < 1:
        raise ValueError(f"synthqa: max_entities must be >= 1, got {max_entities}")
    for i in range(n):
        ex = generate_example(split, i, seed, max_entities)
        yield {"source": ex.source, "target": ex.target}
