"""The corpus of `lmlab bench retrieve`, generated from a seed (nothing downloaded; the same on every machine):
encyclopedic pages about invented towns, rivers, companies, species and people, and KILT-style queries answered by
one page each. How it is built so that BM25 and a sentence encoder make different mistakes (shared names, so that
titles are prefixes of other titles; paraphrased cues) is in docs/benchmarks.md (bench retrieve, "The corpus").

Query i depends only on (seed, i) and the pages, so the first n queries of a larger set are the same n queries:
queries beyond the bench's own can serve as training data for a title generator on the same pages.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lmlab.core.retrieval.kilt import KiltQuery
from lmlab.core.retrieval.retrievers import Document

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "st", "tr",
          "th", "sh", "h", "j", "w"]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ei", "ou", "y"]
CODAS = ["", "", "", "n", "r", "l", "s", "k", "th", "m", "nd", "rk", "st"]
FEMALE = ["Ilsa", "Marta", "Edda", "Nadia", "Vera", "Greta", "Livia", "Clara", "Elin", "Hanna", "Jana", "Lena",
          "Nora", "Petra", "Selma", "Ursula", "Wanda", "Yara"]
MALE = ["Oren", "Tomas", "Lorin", "Sabin", "Piet", "Anselm", "Hugo", "Bruno", "Dorian", "Felix", "Ivo", "Kasimir",
        "Milo", "Otto", "Rafael", "Timo", "Viktor", "Zeno"]

# Descriptive attributes: (the page's words, paraphrases sharing no stem with them)
Pair = tuple[str, tuple[str, ...]]
TOWN_PRODUCTS: list[Pair] = [
    ("wool", ("sheep fleece",)), ("cheese", ("dairy produce",)), ("timber", ("lumber",)), ("pottery", ("ceramics",)),
    ("wine", ("vineyards",)), ("copper mines", ("metal ore",)), ("shipbuilding", ("boatyards",)),
    ("silk", ("fine fabrics",)), ("honey", ("beekeeping",)), ("tobacco", ("cigars",)), ("horses", ("stud farms",)),
    ("tulips", ("flower bulbs",)), ("leather", ("tanneries",)), ("coal", ("collieries",)), ("salt", ("brine pans",))]
LANDMARK_ADJECTIVES: list[Pair] = [
    ("ancient", ("very old",)), ("wooden", ("timber-built",)), ("ruined", ("crumbling",)), ("tall", ("towering",)),
    ("floating", ("drifting",)), ("painted", ("colourful",)), ("marble", ("white stone",)),
    ("underground", ("subterranean",)), ("hilltop", ("elevated",)), ("covered", ("roofed",))]
LANDMARKS: list[Pair] = [
    ("bridge", ("crossing over the water",)), ("market", ("bazaar",)), ("cathedral", ("great church",)),
    ("lighthouse", ("coastal beacon",)), ("clock tower", ("belfry",)), ("harbour", ("port",)),
    ("castle", ("fortress",)), ("windmill", ("sail-powered grinder",)), ("library", ("book archive",)),
    ("observatory", ("stargazing dome",)), ("theatre", ("playhouse",)), ("monastery", ("abbey",)),
    ("bathhouse", ("spa",)), ("palace", ("royal residence",))]
RIVER_FEATURES: list[Pair] = [
    ("waterfalls", ("cascades",)), ("salmon", ("migrating fish",)), ("rapids", ("white water",)),
    ("gorge", ("canyon",)), ("floods", ("seasonal overflowing",)), ("delta", ("fan of channels",)),
    ("ferries", ("boats carrying passengers across",)), ("islands", ("islets",)), ("dams", ("barrages",)),
    ("mills", ("grinding wheels",)), ("vineyards", ("wine grapes",)), ("marshes", ("swamps",))]
COMPANY_PRODUCTS: list[Pair] = [
    ("bicycles", ("bikes",)), ("clocks", ("timepieces",)), ("tractors", ("farm machinery",)),
    ("pianos", ("keyboard instruments",)), ("lamps", ("lighting",)), ("shoes", ("footwear",)),
    ("telescopes", ("optical instruments",)), ("biscuits", ("baked snacks",)), ("soap", ("detergents",)),
    ("rope", ("cordage",)), ("bells", ("chimes",)), ("umbrellas", ("parasols",)), ("toys", ("playthings",)),
    ("paint", ("pigments",)), ("engines", ("motors",)), ("radios", ("wireless sets",)),
    ("cameras", ("photographic equipment",)), ("typewriters", ("writing machines",)), ("carpets", ("rugs",))]
CUSTOMERS: list[Pair] = [
    ("hospitals", ("medical clinics",)), ("schools", ("pupils and teachers",)), ("farmers", ("growers of crops",)),
    ("railways", ("train operators",)), ("the army", ("soldiers",)), ("hotels", ("inns and guesthouses",)),
    ("theatres", ("stage productions",)), ("bakeries", ("bread shops",))]
OCCUPATIONS: list[Pair] = [
    ("painter", ("artist who paints",)), ("violinist", ("musician who plays the fiddle",)),
    ("chemist", ("scientist working on chemical compounds",)), ("architect", ("designer of buildings",)),
    ("novelist", ("writer of fiction",)), ("botanist", ("scientist who studies plants",)),
    ("cartographer", ("maker of maps",)), ("astronomer", ("scientist who observes the stars",)),
    ("composer", ("writer of music",)), ("surgeon", ("doctor who operates on patients",)),
    ("historian", ("scholar of the past",)), ("photographer", ("artist who takes pictures",)),
    ("poet", ("writer of verse",)), ("sculptor", ("artist who carves statues",)),
    ("engineer", ("builder of bridges and machines",)), ("geologist", ("scientist who studies rocks",)),
    ("pianist", ("musician at the keyboard",)), ("diplomat", ("envoy abroad",)), ("cyclist", ("racer of bikes",)),
    ("chef", ("cook in restaurants",)), ("lawyer", ("attorney",)), ("actor", ("performer on stage",)),
    ("explorer", ("leader of expeditions",))]
KNOWN_FOR: list[Pair] = [
    ("portraits", ("pictures of faces",)), ("travels", ("long journeys",)), ("lectures", ("talks at universities",)),
    ("letters", ("correspondence",)), ("inventions", ("new devices",)), ("gardens", ("flower beds",)),
    ("charity", ("helping the poor",)), ("diaries", ("private journals",)), ("chess", ("board games",)),
    ("mountaineering", ("climbing peaks",))]
WORKPLACES: list[Pair] = [
    ("a hospital", ("a medical clinic",)), ("a museum", ("a gallery of antiquities",)), ("a newspaper", ("the press",)),
    ("a bank", ("a lender of money",)), ("a school", ("a classroom",)), ("a shipyard", ("a dockyard",)),
    ("an embassy", ("a consulate",)), ("a circus", ("a travelling show",)), ("a laboratory", ("a research lab",)),
    ("a vineyard", ("a winery",)), ("a railway", ("a train operator",)), ("a prison", ("a jail",))]
GROUPS = [("bird", ("feathered animal",), "plumage"), ("fish", ("aquatic animal with fins",), "scales"),
          ("moth", ("night-flying insect",), "wings"), ("beetle", ("hard-shelled insect",), "wing cases"),
          ("frog", ("amphibian",), "skin"), ("fern", ("spore-bearing plant",), "fronds"),
          ("orchid", ("flowering plant",), "petals"), ("bat", ("flying mammal",), "fur"),
          ("snail", ("mollusc",), "shell"), ("lizard", ("reptile",), "scales")]
PLANTS = ("fern", "orchid")
HABITATS: list[Pair] = [
    ("wetlands", ("marshes and swamps",)), ("forests", ("woodland",)), ("grasslands", ("meadows and prairies",)),
    ("highlands", ("uplands",)), ("coast", ("seashore",)), ("deserts", ("arid dunes",)),
    ("caves", ("underground caverns",)), ("lakes", ("ponds",)), ("tundra", ("frozen plains",))]
FOODS: list[Pair] = [
    ("seeds", ("grain",)), ("insects", ("bugs",)), ("nectar", ("flower sugar",)), ("fruit", ("berries",)),
    ("leaves", ("foliage",)), ("worms", ("earthworms",)), ("algae", ("pond weed",)), ("moss", ("lichen",)),
    ("snails", ("molluscs",))]
COLOURS: list[Pair] = [
    ("red", ("crimson",)), ("blue", ("azure",)), ("green", ("emerald",)), ("yellow", ("golden",)),
    ("grey", ("ashen",)), ("brown", ("chestnut",)), ("black", ("jet-black",)), ("white", ("snowy",))]
REGION_STARTS = ["North", "South", "East", "West", "High", "Silver", "Red", "Green", "Black", "Stone", "Oak", "Iron",
                 "Gold", "Frost", "Sun", "Salt", "Amber", "Raven"]
REGION_ENDS = ["moor", "vale", "dale", "field", "marsh", "wood", "march", "land", "reach", "shire", "hollow", "ford"]
SUFFIXES = ["Mills", "Works", "Brothers", "Industries", "Foundry", "Manufacturing"]
KIND_WORDS: dict[str, Pair] = {"town": ("town", ("settlement", "municipality")),
                               "river": ("river", ("waterway", "watercourse")),
                               "company": ("company", ("firm", "business"))}
KINDS = (("town", 0.22), ("river", 0.12), ("company", 0.18), ("species", 0.18), ("person", 0.30))
ASK_NAME = 0.5  # the share of queries asking for an entity's name (the others: one attribute of a named one)


@dataclass
class Entity:
    kind: str
    title: str
    name: str  # how its text names it
    facts: dict[str, Any] = field(default_factory=dict)
    text: str = ""


class _Names:
    """Invented, unique name roots: two or three syllables, capitalised."""

    def __init__(self, rng: random.Random) -> None:
        self.rng, self.used = rng, set()

    def new(self) -> str:
        while True:
            syllables = [self.rng.choice(ONSETS) + self.rng.choice(VOWELS) + self.rng.choice(CODAS)
                         for _ in range(self.rng.choice((2, 2, 3)))]
            root = "".join(syllables).capitalize()
            if 4 <= len(root) <= 11 and root not in self.used:
                self.used.add(root)
                return root


def _article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _entities(documents: int, rng: random.Random) -> list[Entity]:
    names = _Names(rng)
    regions = rng.sample([a + b for a in REGION_STARTS for b in REGION_ENDS], max(4, documents // 120))
    hills = [f"{names.new()} {rng.choice(['Hills', 'Mountains', 'Range'])}" for _ in range(max(4, documents // 100))]
    seas = [f"{names.new()} {rng.choice(['Sea', 'Bay', 'Gulf'])}" for _ in range(max(3, documents // 300))]
    counts = {kind: max(1, round(share * documents)) for kind, share in KINDS}
    counts["person"] += documents - sum(counts.values())
    entities: dict[str, Entity] = {}  # by title, in the order made

    def add(entity: Entity) -> bool:
        if entity.title in entities:
            return False
        entities[entity.title] = entity
        return True

    towns: list[Entity] = []
    for _ in range(counts["town"]):
        root = names.new()
        town = Entity("town", root, root, {
            "region": rng.choice(regions), "founded": rng.randrange(1150, 1900), "product": rng.choice(TOWN_PRODUCTS),
            "landmark": (rng.choice(LANDMARK_ADJECTIVES), rng.choice(LANDMARKS)),
            "population": rng.randrange(2, 90) * 1000})
        add(town)
        towns.append(town)
    for town in towns:
        same = [t.name for t in towns if t is not town and t.facts["region"] == town.facts["region"]]
        town.facts["neighbours"] = rng.sample(same, min(2, len(same)))

    def make(kind: str, build: Any) -> None:
        made = 0
        while made < counts[kind]:
            made += add(build())

    def river() -> Entity:
        through = rng.choice(towns)
        root = through.name if rng.random() < 0.5 else names.new()  # "Varno River" next to the town "Varno"
        return Entity("river", f"{root} River", f"{root} River", {
            "region": through.facts["region"], "source": rng.choice(hills), "mouth": rng.choice(seas),
            "length": rng.randrange(40, 900), "through": through.name, "feature": rng.choice(RIVER_FEATURES)})

    def company() -> Entity:
        home = rng.choice(towns)
        root = home.name if rng.random() < 0.5 else names.new()
        title = f"{root} {rng.choice(SUFFIXES)}"
        return Entity("company", title, title, {
            "founded": rng.randrange(1800, 2000), "home": home.name, "region": home.facts["region"],
            "founder": f"{rng.choice(FEMALE + MALE)} {names.new()}", "product": rng.choice(COMPANY_PRODUCTS),
            "customers": rng.choice(CUSTOMERS), "employees": rng.randrange(1, 60) * 50})

    def species() -> Entity:
        group = rng.choice(GROUPS)
        title = f"{rng.choice(towns).name if rng.random() < 0.3 else names.new()} {group[0]}"
        return Entity("species", title, title, {
            "group": group, "habitat": rng.choice(HABITATS), "region": rng.choice(regions), "food": rng.choice(FOODS),
            "colour": rng.choice(COLOURS)})

    def person() -> Entity:
        given = rng.choice(FEMALE + MALE)
        name = f"{given} {rng.choice(towns).name if rng.random() < 0.3 else names.new()}"
        occupation, home = rng.choice(OCCUPATIONS), rng.choice(towns)
        return Entity("person", name if name not in entities else f"{name} ({occupation[0]})", name, {
            "born": rng.randrange(1800, 1995), "occupation": occupation, "hometown": home.name,
            "region": home.facts["region"], "studied": f"University of {rng.choice(towns).name}",
            "known_for": rng.choice(KNOWN_FOR), "workplace": rng.choice(WORKPLACES),
            "pronoun": "She" if given in FEMALE else "He"})

    make("river", river)
    for entity in entities.values():
        if entity.kind == "river":
            next(t for t in towns if t.name == entity.facts["through"]).facts.setdefault("river", entity.name)
    make("company", company)
    make("species", species)
    make("person", person)
    return list(entities.values())


def _town_text(e: Entity, rng: random.Random) -> str:
    f = e.facts
    adjective, landmark = f["landmark"]
    first = f"{e.name} is a town in the {f['region']} region"
    parts = [first + (f", on the banks of the {f['river']}." if "river" in f else "."),
             f"It was founded in {f['founded']} and is known for its {f['product'][0]}.",
             f"Its best-known landmark is the {adjective[0]} {landmark[0]}."]
    extra = [f"It has about {f['population']:,} inhabitants."]
    if f["neighbours"]:
        extra.append(f"Its neighbouring towns are {' and '.join(f['neighbours'])}.")
    return " ".join(parts + rng.sample(extra, 1))


def _river_text(e: Entity, rng: random.Random) -> str:
    f = e.facts
    parts = [f"The {e.name} is a river in the {f['region']} region.",
             f"It rises in the {f['source']} and flows {f['length']} km into the {f['mouth']}.",
             f"It is known for its {f['feature'][0]}."]
    if rng.random() < 0.7:
        parts.append(f"It passes through the town of {f['through']}.")
    return " ".join(parts)


def _company_text(e: Entity, rng: random.Random) -> str:
    f = e.facts
    parts = [f"{e.name} is a company founded in {f['founded']} by {f['founder']} in {f['home']}, a town in the "
             f"{f['region']} region.", f"It makes {f['product'][0]} and supplies {f['customers'][0]}."]
    if rng.random() < 0.6:
        parts.append(f"It employs about {f['employees']:,} people.")
    return " ".join(parts)


def _species_text(e: Entity, rng: random.Random) -> str:
    f = e.facts
    group = f["group"]
    first = f"The {e.name} is a species of {group[0]} found in the {f['habitat'][0]} of the {f['region']} region."
    if group[0] in PLANTS:
        return f"{first} It has {f['colour'][0]} {group[2]}."
    return f"{first} It feeds on {f['food'][0]} and has {f['colour'][0]} {group[2]}."


def _person_text(e: Entity, rng: random.Random) -> str:
    f = e.facts
    their = "her" if f["pronoun"] == "She" else "his"
    return (f"{e.name} (born {f['born']}) is {_article(f['occupation'][0])} from {f['hometown']}, a town in the "
            f"{f['region']} region. {f['pronoun']} worked for years at {f['workplace'][0]} and is known for {their} "
            f"{f['known_for'][0]}. {f['pronoun']} studied at the {f['studied']}.")


TEXTS = {"town": _town_text, "river": _river_text, "company": _company_text, "species": _species_text,
         "person": _person_text}


def _which(rng: random.Random, kind: str, region: str, described: list[str], where: str = "is in") -> str:
    """'Which <kind> <clause>, <clause> and <clause>?': its region and two descriptive clauses, in random order."""
    clauses = [f"{where} the {region} region", *rng.sample(described, 2)]
    rng.shuffle(clauses)
    return f"Which {kind} {clauses[0]}, {clauses[1]} and {clauses[2]}?"


def _question(e: Entity, rng: random.Random, p: float) -> tuple[str, str]:
    """One (query, answer) about `e`: its name from its region and descriptive attributes, or an attribute by name."""
    f = e.facts

    def cue(lexical: str, paraphrases: Sequence[str]) -> str:
        """The page's own words with probability `p`, else one of their paraphrases."""
        return lexical if rng.random() < p else rng.choice(list(paraphrases))

    ask_name = rng.random() < ASK_NAME
    if e.kind == "town":
        kind = cue(*KIND_WORDS["town"])
        adjective, landmark = f["landmark"]
        if ask_name:
            return _which(rng, kind, f["region"], [
                f"is {cue('known for', ('famous for',))} its {cue(*f['product'])}",
                f"has {_article(cue(*adjective))} {cue(*landmark)}"]), e.name
        if rng.random() < 0.5:
            return f"In what year was the {kind} of {e.name} {cue('founded', ('established', 'set up'))}?", \
                str(f["founded"])
        return f"What is the {kind} of {e.name} {cue('known for', ('famous for',))}?", f["product"][0]
    if e.kind == "river":
        kind = cue(*KIND_WORDS["river"])
        if ask_name:
            return _which(rng, kind, f["region"], [
                f"is {cue('known for', ('famous for',))} its {cue(*f['feature'])}",
                f"{cue('flows into', ('empties into', 'drains into'))} the {f['mouth']}"]), e.name
        if rng.random() < 0.5:
            return f"Into which sea does the {e.name} {cue('flow', ('empty', 'drain'))}?", f["mouth"]
        return f"Where does the {e.name} {cue('rise', ('have its source', 'begin'))}?", f["source"]
    if e.kind == "company":
        kind = cue(*KIND_WORDS["company"])
        if ask_name:
            return _which(rng, kind, f["region"], [
                f"{cue('makes', ('produces', 'manufactures'))} {cue(*f['product'])}",
                f"{cue('supplies', ('sells to', 'serves'))} {cue(*f['customers'])}"]), e.name
        if rng.random() < 0.5:
            return f"Who {cue('founded', ('established', 'set up'))} the {kind} {e.name}?", f["founder"]
        return f"What does {e.name} {cue('make', ('produce', 'manufacture'))}?", f["product"][0]
    if e.kind == "species":
        group = f["group"]
        kind = cue(*group[:2])
        described = [f"{cue('is found in the', ('lives in',))} {cue(*f['habitat'])}",
                     f"has {cue(*f['colour'])} {group[2]}"]
        if group[0] not in PLANTS:
            described.append(f"{cue('feeds on', ('eats',))} {cue(*f['food'])}")
        if ask_name:
            return _which(rng, kind, f["region"], described), e.name
        if group[0] in PLANTS:
            return f"What colour are the {group[2]} of the {e.name}?", f["colour"][0]
        return f"What does the {e.name} {cue('feed on', ('eat',))}?", f["food"][0]
    occupation = cue(*f["occupation"])
    if ask_name:
        return _which(rng, occupation, f["region"], [
            f"is {cue('known for', ('famous for',))} {cue(*f['known_for'])}",
            f"{cue('worked', ('was employed',))} for years at {cue(*f['workplace'])}"], "comes from"), e.name
    if rng.random() < 0.5:
        return f"Which town is the {occupation} {e.name} {cue('from', ('a native of',))}?", f["hometown"]
    return f"Where did the {occupation} {e.name} {cue('study', ('get an education', 'train'))}?", f["studied"]


def bench_corpus(documents: int, queries: int, seed: int, *,
                 lexical_share: float = 0.3) -> tuple[list[Document], list[KiltQuery]]:
    """`documents` pages (ids `p00001`...) and `queries` KILT queries (ids `q00001`...), each answered by one page
    whose text contains it; `lexical_share`: the chance that a cue uses the page's own words, not a paraphrase."""
    if documents < 10:
        raise ValueError(f"the bench corpus needs at least 10 documents, got {documents}")
    rng = random.Random(f"lmlab-bench-retrieve-{seed}")
    entities = _entities(documents, rng)
    rng.shuffle(entities)
    docs = []
    for i, entity in enumerate(entities, 1):
        entity.text = TEXTS[entity.kind](entity, rng)
        docs.append(Document(f"p{i:05d}", entity.title, entity.text))
    found = []
    for n in range(1, queries + 1):
        qrng = random.Random(f"lmlab-bench-retrieve-{seed}-query-{n}")
        index = qrng.randrange(len(entities))
        text, answer = _question(entities[index], qrng, lexical_share)
        doc = docs[index]
        found.append(KiltQuery(f"q{n:05d}", text, (answer,), ((doc.id,),), ((doc.title,),)))
    return docs, found


def kilt_row(query: KiltQuery) -> dict[str, Any]:
    """A query as a KILT row {id, input, output: [{answer, provenance: [{wikipedia_id, title}]}]}."""
    return {"id": query.id, "input": query.input,
            "output": [{"answer": query.answers[0] if query.answers else "",
                        "provenance": [{"wikipedia_id": page, "title": title}
                                       for page, title in zip(pages, titles, strict=True)]}
                       for pages, titles in zip(query.evidence, query.titles, strict=True)]}
