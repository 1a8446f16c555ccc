# ruff: noqa: E501  (a data file: long natural-language strings read better unbroken)
"""A deterministic, labelled long-conversation retrieval dataset for benchmarks/bench_retrieval.py.

``generate_dataset(seed)`` builds a multi-session conversation between a user and an assistant (about fifty
dated sessions, a few thousand turns of everyday filler) with facts planted in it, and a labelled set of
questions asked after the last session. Each question lists the keys of its evidence turns; a retriever
scores a hit at k when any evidence turn is in its top k. Categories (``Question.category``):

- ``paraphrase``: a fact about someone in the user's life, stated once, asked later in other words
  ("Clara can't eat shellfish, she breaks out in hives" -> "Which food is my sister allergic to?").
- ``updated``: a fact that changes over time (moved city, changed job ...); only the NEWEST statement is the
  evidence, the older ones are distractors.
- ``distractor``: a group of near-identical statements that differ in one detail (dentist / vet / mechanic
  appointments ...); the question asks about one member.
- ``next_turn``: the user names a topic and asks for advice; the answer is in the assistant's NEXT turn,
  which does not repeat the topic's words.
- ``speaker``: the user and the assistant both talk about a topic; the question names the speaker
  ("what did I say ..." / "what did the assistant recommend ...") and only that speaker's turn counts.

Run ``python benchmarks/retrieval_dataset.py`` to print statistics and a few samples.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Question", "RetrievalDataset", "Turn", "generate_dataset", "validate_dataset"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the conversation."""

    key: str
    """Stable id, ``"S07-T012"`` (session 7, turn 12)."""
    session_id: str
    """Session id, ``"S07"``."""
    turn_index: int
    """Position inside its session, from 0."""
    speaker: str
    """``"user"`` or ``"assistant"``."""
    session_date: str
    """ISO date of the session."""
    content: str
    """The message text."""
    position: int
    """Position in the whole conversation, from 0."""

    def metadata(self) -> dict[str, object]:
        """The metadata a memory of this turn carries."""
        return {
            "session_id": self.session_id,
            "turn_index": self.turn_index,
            "speaker": self.speaker,
            "session_date": self.session_date,
            "turn_key": self.key,
        }


@dataclass(frozen=True, slots=True)
class Question:
    """A labelled question asked after the last session."""

    qid: str
    """Question id, ``"Q042"``."""
    text: str
    """The question as the user would type it."""
    category: str
    """``paraphrase``, ``updated``, ``distractor``, ``next_turn`` or ``speaker``."""
    evidence: tuple[str, ...]
    """Keys of the turns that answer it (a hit is any of them)."""
    answer: str
    """A short human-readable answer, for reading failures."""
    stale: tuple[str, ...] = ()
    """For ``updated`` questions: keys of the older, superseded statements (wrong answers)."""


@dataclass(slots=True)
class RetrievalDataset:
    """The conversation and its questions."""

    seed: int
    """Seed it was generated from."""
    turns: list[Turn]
    """Every turn, in conversation order."""
    questions: list[Question]
    """The labelled questions."""
    now: dt.datetime = field(default_factory=lambda: dt.datetime(2026, 1, 1))
    """When the questions are asked (the day after the last session)."""

    def turn(self, key: str) -> Turn:
        """Return the turn with this key."""
        return self._by_key()[key]

    def _by_key(self) -> dict[str, Turn]:
        return {turn.key: turn for turn in self.turns}


# --------------------------------------------------------------------------- the people and their facts

# (relation as the user says it, name, subject pronoun, possessive)
PEOPLE = [
    ("sister", "Clara", "she", "her"),
    ("brother", "Mateo", "he", "his"),
    ("mom", "Helen", "she", "her"),
    ("best friend", "Diego", "he", "his"),
    ("colleague", "Priya", "she", "her"),
    ("neighbour", "Mr. Okafor", "he", "his"),
    ("partner", "Sam", "they", "their"),
    ("cousin", "Lena", "she", "her"),
]

JOBS = [
    ("veterinarian", "the animal hospital on Kings Road"),
    ("paramedic", "the county ambulance service"),
    ("architect", "a small studio downtown"),
    ("pastry chef", "that French bakery near the station"),
    ("data analyst", "an insurance company"),
    ("airline pilot", "a regional carrier"),
    ("chemistry teacher", "the high school across the river"),
    ("physiotherapist", "a sports clinic"),
    ("court stenographer", "the district court"),
    ("tattoo artist", "a studio in the old town"),
    ("park ranger", "the national forest service"),
    ("sound engineer", "a recording studio"),
]
CITIES = [
    "Leeds", "Porto", "Valencia", "Gdansk", "Tucson", "Halifax", "Dunedin", "Bergen", "Ljubljana",
    "Savannah", "Cork", "Trieste", "Aarhus", "Brno", "Kyoto", "Rosario",
]  # fmt: skip
HOBBIES = [
    "bouldering", "pottery", "birdwatching", "competitive chess", "beekeeping", "salsa dancing",
    "woodturning", "sea kayaking", "astrophotography", "fencing",
]  # fmt: skip
FOODS = ["shellfish", "sesame", "kiwi fruit", "cashews", "eggs", "soy", "mustard", "celery"]
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]  # fmt: skip
WISHES = [
    "a mechanical keyboard", "a cast-iron skillet", "noise-cancelling headphones", "a vinyl record player",
    "a hammock", "a fountain pen", "a bread maker", "a telescope",
]  # fmt: skip
CARS = [
    "a red Mazda MX-5", "a used Volvo estate", "an electric Kia Niro", "a camper van", "a Vespa scooter",
    "a Toyota pickup", "a Fiat Panda", "a Tesla Model 3",
]  # fmt: skip
PETS = [
    ("tabby cat", "Biscuit"), ("beagle", "Pickle"), ("parrot", "Mango"), ("rabbit", "Clover"),
    ("greyhound", "Comet"), ("tortoise", "Socrates"), ("ferret", "Noodle"), ("husky", "Juniper"),
]  # fmt: skip


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


@dataclass(slots=True)
class _Episode:
    """A short exchange planted in a session; ``evidence`` are offsets into ``turns`` per question."""

    turns: list[tuple[str, str]]
    min_session: int = 0
    max_session: int = 10_000
    placed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _PendingQuestion:
    text: str
    category: str
    answer: str
    evidence: list[tuple[_Episode, int]]
    stale: list[tuple[_Episode, int]] = field(default_factory=list)


ACKS = [
    "That's good to know, thanks for telling me.",
    "Oh nice, I'll keep that in mind.",
    "Got it. Anything you'd like to do about it?",
    "Thanks for the update!",
    "Noted. Let me know if that changes anything for your plans.",
    "That sounds like a big change. How do you feel about it?",
    "Interesting! Tell me more whenever you like.",
    "Understood, I'll remember that.",
]


def _person_facts(rng: random.Random, people: list[tuple[str, str, str, str]]) -> list[tuple[str, ...]]:
    """Return (person index, attribute, statement, question, answer) for each single-statement fact."""
    facts: list[tuple[str, ...]] = []
    jobs = rng.sample(JOBS, len(JOBS))
    cities = rng.sample(CITIES, len(CITIES))
    hobbies = rng.sample(HOBBIES, len(HOBBIES))
    foods = rng.sample(FOODS, len(FOODS))
    wishes = rng.sample(WISHES, len(WISHES))
    cars = rng.sample(CARS, len(CARS))
    pets = rng.sample(PETS, len(PETS))
    for index, (relation, name, pronoun, _possessive) in enumerate(people):
        who_q = rng.choice([f"my {relation}", name])
        who_q2 = rng.choice([f"my {relation}", name])
        job, org = jobs[index]
        city = cities[index]
        day, month = rng.randint(1, 28), MONTHS[rng.randrange(12)]
        pet, pet_name = pets[index]
        verb_s = "" if pronoun == "they" else "s"
        facts += [
            (
                str(index),
                "job",
                f"Big news from {name}: my {relation} got hired as a {job} at {org}.",
                f"What does {who_q} do for a living these days?",
                job,
            ),
            (
                str(index),
                "city",
                f"My {relation} {name} signed a lease on a flat in {city}, finally out of the suburbs.",
                rng.choice([f"Which town is {who_q} based in now?", f"Where has {who_q} settled down?"]),
                city,
            ),
            (
                str(index),
                "hobby",
                f"My {relation} {name} has gotten really into {hobbies[index]}; every weekend it's all {pronoun} talk{verb_s} about.",
                f"What pastime is {who_q2} obsessed with lately?",
                hobbies[index],
            ),
            (
                str(index),
                "allergy",
                f"Heads up for the dinner party: my {relation} {name} can't eat {foods[index]}, {pronoun} break{verb_s} out in hives.",
                f"Which ingredient is {who_q} allergic to?",
                foods[index],
            ),
            (
                str(index),
                "birthday",
                f"My {relation} {name} turns {rng.randint(25, 70)} on the {_ordinal(day)} of {month}, we should plan something.",
                f"When is {who_q2}'s birthday?",
                f"{month} {day}",
            ),
            (
                str(index),
                "wish",
                f"My {relation} {name} keeps dropping hints about wanting {wishes[index]}.",
                f"What present could I buy for {who_q}?",
                wishes[index],
            ),
            (
                str(index),
                "car",
                f"My {relation} {name} traded in the old hatchback for {cars[index]}.",
                f"What vehicle does {who_q2} drive now?",
                cars[index],
            ),
            (
                str(index),
                "pet",
                f"My {relation} {name} brought home a {pet} from the shelter and named it {pet_name}.",
                f"What animal did {who_q} adopt, and what is it called?",
                f"a {pet} named {pet_name}",
            ),
        ]
    return facts


# User facts that change over time: (statement templates (one per stage), values (one list per attribute),
# question). The newest statement is the only evidence.
USER_UPDATES: list[tuple[list[str], list[str], str]] = [
    (
        [
            "I've been living in {v} for about five years now.",
            "The move is done, we're officially living in {v}!",
            "Plot twist: we're relocating again, this time to {v}.",
        ],
        ["Denver", "Portland", "Minneapolis", "Lisbon", "Glasgow", "Montreal"],
        "Where do I live now?",
    ),
    (
        [
            "I work as a {v} at a logistics firm.",
            "Today was my first day in the new role as a {v}.",
            "I got promoted, my title is now {v}.",
        ],
        ["junior accountant", "financial controller", "head of finance", "QA tester", "product manager"],
        "What is my current job title?",
    ),
    (
        ["My employer is {v}, they make industrial pumps.", "I accepted the offer from {v}, I start Monday."],
        ["Hartmann Pumps", "Brightline Robotics", "Northwind Foods", "Ostara Labs"],
        "Who is my employer now?",
    ),
    (
        ["I drive {v} to work.", "Sold my old car and bought {v}."],
        ["a 2011 Honda Civic", "a hybrid Toyota Corolla", "a silver Skoda Octavia", "a Nissan Leaf"],
        "What car do I own currently?",
    ),
    (
        ["I'm a member of {v}, the gym by the mall.", "Cancelled my old membership and signed up at {v}."],
        ["FitZone", "Iron Temple", "Pulse Athletics", "the YMCA"],
        "Which gym am I a member of now?",
    ),
    (
        ["My phone is {v}, it's getting slow.", "Upgraded my phone, I'm on {v} now."],
        ["a Pixel 6", "an iPhone 15", "a Galaxy S24", "a Fairphone 5"],
        "Which phone do I have now?",
    ),
    (
        ["I've been eating {v} for a while.", "New year, new me: I switched to {v}."],
        ["a vegetarian diet", "a pescatarian diet", "a low-carb diet", "a fully vegan diet"],
        "What diet am I on these days?",
    ),
    (
        ["My commute is {v}, takes about forty minutes.", "I changed how I get to the office, it's {v} now."],
        ["by bus", "by bike", "on the tram", "on foot", "by train"],
        "How do I commute to work now?",
    ),
    (
        [
            "My long run is {v} on Sundays.",
            "I pushed my Sunday long run up to {v}.",
            "Training is going great, the Sunday run is {v} now.",
        ],
        ["8 km", "12 km", "16 km", "21 km", "25 km"],
        "How long is my Sunday long run now?",
    ),
    (
        ["My go-to coffee place is {v}.", "I've abandoned my old coffee spot, {v} is my new favourite."],
        ["Bean There", "the Roastery on 5th", "Café Mondo", "Little Owl Espresso"],
        "Which coffee place is my favourite now?",
    ),
    (
        ["I'm learning {v} on Duolingo.", "I dropped that and started learning {v} instead."],
        ["Italian", "Japanese", "Portuguese", "Korean", "German"],
        "Which language am I learning now?",
    ),
    (
        ["I'm reading {v} at the moment.", "Finished the last one, now I'm halfway through {v}."],
        ["Dune", "Middlemarch", "The Overstory", "Piranesi", "Anna Karenina", "Project Hail Mary"],
        "What book am I reading now?",
    ),
    (
        ["My manager is {v}, very hands-off.", "We had a reorg, my new boss is {v}."],
        ["Gregory", "Annika", "Tom Whitfield", "Rosa Delgado"],
        "Who is my boss now?",
    ),
    (
        ["Our internet provider is {v}.", "We switched broadband to {v} because the old one kept dropping."],
        ["Comcast", "FiberNet", "Starlink", "Sonic"],
        "Who is our internet provider now?",
    ),
    (
        ["My GP is Dr. {v}.", "I registered with a new family doctor, Dr. {v}."],
        ["Patel", "Hughes", "Moreau", "Lindqvist"],
        "Who is my doctor now?",
    ),
    (
        ["Band practice is on {v} evenings.", "We moved band practice to {v} evenings."],
        ["Tuesday", "Thursday", "Wednesday", "Monday"],
        "Which evening is band practice now?",
    ),
    (
        ["I usually go to bed around {v}.", "I've been trying a new sleep schedule, lights out at {v}."],
        ["midnight", "10:30 pm", "11 pm", "9:45 pm"],
        "What time do I go to bed these days?",
    ),
    (
        ["We keep our savings with {v}.", "We moved all our savings over to {v}, better interest."],
        ["Chase", "Ally Bank", "a local credit union", "Marcus"],
        "Which bank has our savings now?",
    ),
    (
        ["My yoga class is at {v}.", "I switched to the yoga sessions at {v}."],
        ["Lotus Studio", "the community centre", "Flow House", "Studio Prana"],
        "Where do I take my stretching and breathing classes now?",
    ),
    (
        ["I'm playing {v} on the weekends.", "I got bored of that, now it's {v} every weekend."],
        ["Elden Ring", "Stardew Valley", "Baldur's Gate 3", "Zelda Tears of the Kingdom"],
        "Which video game am I playing now?",
    ),
    (
        ["We have {v} at home.", "We adopted another one, so now we have {v}."],
        ["one cat", "two cats", "two cats and a dog", "three cats"],
        "How many pets do we have now?",
    ),
    (
        ["My laptop is {v}.", "Work gave me a new laptop, {v}."],
        ["a ThinkPad X1", "a MacBook Air M2", "a Dell XPS 13", "a Framework 13"],
        "Which computer do I use for work now?",
    ),
    (
        ["I drink about {v} of coffee a day.", "I've cut back, it's {v} of coffee a day now."],
        ["four cups", "two cups", "one cup", "five cups"],
        "How many cups of coffee do I drink a day now?",
    ),
    (
        ["Our rent is {v} a month.", "The landlord raised it, rent is {v} a month now."],
        ["$1,450", "$1,600", "$1,725", "$1,900"],
        "How much is our rent now?",
    ),
    (
        ["I volunteer at {v} on Saturdays.", "I switched my Saturday volunteering to {v}."],
        ["the food bank", "the animal shelter", "the library literacy programme", "the community garden"],
        "Where do I volunteer on Saturdays now?",
    ),
    (
        ["My team at work uses {v} for everything.", "We migrated the whole codebase to {v} last sprint."],
        ["Java", "Go", "Kotlin", "Rust", "TypeScript"],
        "What programming language does my team use now?",
    ),
]

# Near-duplicate groups: a template with one varying detail; each member is asked about once.
# (statement template with {item} and {detail}, [(item, detail, question)])
DISTRACTOR_GROUPS: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "Reminder to self: the {item} appointment is on {detail}.",
        [
            ("dentist", "Tuesday the 14th at 9 am", "When am I getting my teeth checked?"),
            ("vet", "Thursday the 16th at 9 am", "When is the dog's check-up with the animal doctor?"),
            ("mechanic", "Tuesday the 21st at 10 am", "When does the car go in for its service?"),
            ("dermatologist", "Friday the 17th at 2 pm", "When do I see the skin specialist?"),
            ("haircut", "Saturday the 18th at 11 am", "When is my next trim at the barber?"),
        ],
    ),
    (
        "The wifi password at the {item} is {detail}.",
        [
            ("cabin", "pinecone-4471", "What's the network key for the place in the woods?"),
            ("office", "BlueHarbor#22", "What do I type to get online at work?"),
            ("in-laws' house", "grandma1957", "How do I connect to the internet at my spouse's parents'?"),
            ("studio", "mixdown_88", "What's the wireless code where I record music?"),
        ],
    ),
    (
        "Our flight to {item} is {detail}, don't let me forget.",
        [
            ("Lisbon", "TP 1357 leaving at 7:40", "What's the flight number for the Portugal trip?"),
            ("Oslo", "SK 4402 leaving at 13:15", "When does the plane to Norway depart?"),
            ("Rome", "AZ 609 leaving at 18:05", "Which flight are we taking to Italy?"),
            ("Reykjavik", "FI 452 leaving at 6:20", "What time is the departure for Iceland?"),
        ],
    ),
    (
        "I booked a table at {item} for {detail}.",
        [
            (
                "Nonna's Trattoria",
                "our anniversary on the 3rd",
                "Where are we celebrating being married another year?",
            ),
            (
                "Sakura Sushi",
                "Dad's retirement on the 9th",
                "Which restaurant did I reserve for my father's farewell from work?",
            ),
            (
                "The Green Fork",
                "Priya's farewell lunch on the 12th",
                "Where is the goodbye lunch for my coworker?",
            ),
            (
                "El Toro",
                "the team dinner on the 20th",
                "Which place did I pick for dinner with my whole team?",
            ),
        ],
    ),
    (
        "The tracking number for the {item} order is {detail}.",
        [
            ("sofa", "ZX-48812", "How can I trace the couch delivery?"),
            ("bookshelf", "ZX-48851", "What's the shipment code for the shelving unit?"),
            ("desk lamp", "QP-10077", "What number do I use to follow the lighting purchase?"),
            ("running shoes", "QP-10093", "How do I track the sneakers I ordered?"),
        ],
    ),
    (
        "The {item} meets in room {detail}.",
        [
            ("book club", "214 of the public library", "Where does my reading group gather?"),
            ("chess club", "3B at the community centre", "Where do the board game players meet up?"),
            ("choir", "12 at St. Mary's hall", "Where are the singing rehearsals held?"),
            (
                "Spanish conversation group",
                "108 at the university",
                "Where do I practice talking en español?",
            ),
        ],
    ),
    (
        "My {item} PIN is {detail}, don't tell anyone.",
        [
            ("gym locker", "4821", "What's the code for my storage box at the fitness centre?"),
            ("garage door", "9034", "How do I open the place where we park the car?"),
            ("bike lock", "1170", "What's the combination to unlock my bicycle?"),
            ("office alarm", "6652", "What do I enter to disarm the security system at work?"),
        ],
    ),
    (
        "Parent-teacher meeting for {item} is {detail}.",
        [
            ("Ava's class", "Monday at 4:30 with Ms. Grant", "When do I meet my daughter's teacher?"),
            (
                "Leo's class",
                "Wednesday at 5:15 with Mr. Park",
                "When is the conference about my son's schooling?",
            ),
            (
                "the soccer team",
                "Friday at 6 with coach Ruiz",
                "When do the football parents get together with the trainer?",
            ),
        ],
    ),
    (
        "The {item} subscription renews on {detail}.",
        [
            ("Netflix", "the 5th for $15.49", "When is the streaming service charging me again?"),
            ("Spotify", "the 11th for $11.99", "When does my music app bill me next?"),
            ("New York Times", "the 19th for $4.25", "When is the newspaper payment due?"),
            ("Adobe", "the 27th for $59.99", "When will the photo-editing software fee come out?"),
        ],
    ),
]

# The answer is in the assistant's turn right after the user names the topic.
# (user request naming the topic, assistant answer without the topic's words, question, short answer)
NEXT_TURN: list[tuple[str, str, str, str]] = [
    (
        "Can you recommend a book to get better at negotiation?",
        "Try 'Never Split the Difference' by Chris Voss; it's practical and full of stories from hostage talks.",
        "Which book did you recommend for negotiation?",
        "Never Split the Difference",
    ),
    (
        "What stretch should I do for my lower back in the morning?",
        "Do the cat-cow: on all fours, slowly arch and round the spine ten times, then hold child's pose for 30 seconds.",
        "What stretch did you give me for my lower back?",
        "cat-cow + child's pose",
    ),
    (
        "My sourdough is always too dense, what hydration should I use?",
        "Go up to about 75 percent water to flour, and give the bulk ferment an extra hour somewhere warm.",
        "What hydration did you say my sourdough needs?",
        "75 percent",
    ),
    (
        "Any podcast suggestions for learning Spanish on my commute?",
        "Coffee Break Spanish is great for beginners, and Duolingo's narrative episodes are good once you improve.",
        "Which podcast did you suggest for learning Spanish?",
        "Coffee Break Spanish",
    ),
    (
        "Help me pick a name for my bakery business.",
        "How about 'Rise & Crumb'? It's short, warm, and works well on a sign and an Instagram handle.",
        "What name did you come up with for my bakery?",
        "Rise & Crumb",
    ),
    (
        "What should I get my wife for our tenth anniversary?",
        "Tin is the traditional material for ten years: a custom engraved tin map of where you met would be lovely.",
        "What did you suggest I get my wife for our anniversary?",
        "engraved tin map",
    ),
    (
        "How do I stop my basil plant from wilting?",
        "It probably needs more light and less water: move it to a south window and water only when the top inch is dry.",
        "What did you tell me to do about my wilting basil plant?",
        "more light, less water",
    ),
    (
        "What's a good way to fall asleep faster?",
        "Try the 4-7-8 pattern: inhale for 4 counts, hold for 7, exhale for 8, and keep screens out of the bedroom.",
        "What did you suggest to help me fall asleep faster?",
        "4-7-8 breathing",
    ),
    (
        "I need a vegetarian main for a dinner party of eight.",
        "A big mushroom and chestnut wellington works: make it the day before and bake it just before guests arrive.",
        "What vegetarian main did you propose for the dinner party?",
        "mushroom and chestnut wellington",
    ),
    (
        "Which programming language should my nephew learn first?",
        "Python: readable syntax, huge community, and he can build games with Pygame within a week.",
        "Which programming language did you advise for my nephew?",
        "Python",
    ),
    (
        "Can you suggest a weekend trip from Boston?",
        "Drive up to Portland, Maine: lobster rolls, the Old Port, and the lighthouse at Cape Elizabeth.",
        "Where did you suggest for a weekend trip from Boston?",
        "Portland, Maine",
    ),
    (
        "How should I clean the cast iron pan?",
        "Scrub it with coarse salt and a little hot water, dry it on the stove, then wipe on a thin film of oil.",
        "How did you say I should clean the cast iron pan?",
        "salt scrub, dry on stove, oil",
    ),
    (
        "What board game would work for a family with young kids?",
        "Ticket to Ride: First Journey is simple enough for six-year-olds and still fun for adults.",
        "Which board game did you suggest for the kids?",
        "Ticket to Ride: First Journey",
    ),
    (
        "Recommend a movie for a rainy Sunday.",
        "Watch 'Paddington 2', it's cosy, funny, and somehow the most wholesome film ever made.",
        "Which movie did you recommend for a rainy Sunday?",
        "Paddington 2",
    ),
    (
        "How can I keep my hands warm while cycling in winter?",
        "Get lobster-style gloves with a thin merino liner underneath, and add bar mitts if it drops below freezing.",
        "What did you suggest to keep my hands warm while cycling?",
        "lobster gloves + merino liners",
    ),
    (
        "What's a good first houseplant that's hard to kill?",
        "A snake plant: it tolerates low light and only needs water every two or three weeks.",
        "Which houseplant did you suggest for a beginner?",
        "snake plant",
    ),
    (
        "Can you suggest a budgeting method? I keep overspending.",
        "Use the 50/30/20 split: half for needs, thirty percent for wants, twenty for savings, tracked weekly.",
        "What budgeting method did you give me?",
        "50/30/20",
    ),
    (
        "My toddler won't eat vegetables, any ideas?",
        "Blend spinach into pancakes or smoothies, and let her help wash and arrange food on the plate.",
        "How did you say I could get my toddler to eat vegetables?",
        "spinach in pancakes/smoothies",
    ),
    (
        "What should I name my new golden retriever puppy?",
        "Maple would be adorable, or Rufus if you want something classic.",
        "What names did you suggest for the puppy?",
        "Maple or Rufus",
    ),
    (
        "How do I ask my boss for a raise?",
        "Bring a one-page list of your results with numbers, name a specific figure, and ask in a scheduled one-to-one.",
        "What was your advice on asking my boss for a raise?",
        "results list, specific figure, scheduled 1:1",
    ),
    (
        "Which camera is good for a beginner photographer?",
        "A used Fujifilm X-T30 with the 18-55 kit lens is a great start, and it holds its value.",
        "Which camera did you recommend for a beginner?",
        "Fujifilm X-T30",
    ),
    (
        "What can I cook with leftover rice?",
        "Make kimchi fried rice: day-old rice, chopped kimchi, a fried egg on top and a drizzle of sesame oil.",
        "What did you suggest I cook with the leftover rice?",
        "kimchi fried rice",
    ),
    (
        "How do I get rid of fruit flies in the kitchen?",
        "Put apple cider vinegar in a jar with a drop of dish soap and cover it with pierced cling film.",
        "How did you say to get rid of the fruit flies?",
        "cider vinegar + soap trap",
    ),
    (
        "Suggest a warm-up before my 5k race.",
        "Jog easy for ten minutes, then do leg swings and four 20-second strides at race pace.",
        "What warm-up did you give me for the 5k race?",
        "10 min jog, leg swings, 4 strides",
    ),
    (
        "What's a good gift for a coworker who is leaving?",
        "A nice notebook and a card everyone signs is thoughtful without being awkward; add a local coffee voucher.",
        "What gift did you suggest for my coworker who is leaving?",
        "notebook, signed card, coffee voucher",
    ),
    (
        "Can you recommend a beginner guitar song?",
        "Start with 'Horse with No Name': just two chords and a steady strum pattern.",
        "Which guitar song did you recommend for a beginner?",
        "Horse with No Name",
    ),
    (
        "What should I pack for a week of hiking in Scotland?",
        "Waterproof jacket and trousers, midge net, broken-in boots, and layers of merino; the weather flips hourly.",
        "What did you tell me to pack for hiking in Scotland?",
        "waterproofs, midge net, boots, merino layers",
    ),
    (
        "How do I remove a red wine stain from the carpet?",
        "Blot, don't rub, then cover it with baking soda and a splash of hydrogen peroxide, and vacuum once dry.",
        "How did you say to remove the red wine stain?",
        "blot, baking soda + peroxide",
    ),
    (
        "Any tips for a long-haul flight with a baby?",
        "Book the bulkhead bassinet seat, feed during take-off and landing for their ears, and bring two spare outfits.",
        "What tips did you give for the long-haul flight with a baby?",
        "bulkhead bassinet, feed at take-off/landing",
    ),
    (
        "What's a simple way to start meditating?",
        "Sit for five minutes after brushing your teeth and count ten breaths at a time; the Medito app is free.",
        "How did you suggest I start meditating?",
        "5 minutes after brushing teeth, count breaths, Medito",
    ),
    (
        "What wine goes with grilled salmon?",
        "A dry Pinot Noir from Oregon or a crisp Sancerre both pair nicely.",
        "Which wine did you suggest with the grilled salmon?",
        "Pinot Noir or Sancerre",
    ),
    (
        "How should I prepare for a job interview at a startup?",
        "Use their product for a week, prepare three stories in STAR format, and ask about runway and team size.",
        "How did you tell me to prepare for the startup interview?",
        "use product, STAR stories, ask about runway",
    ),
    (
        "Suggest a name for our team's Slack channel about coffee.",
        "#bean-there-done-that is hard to beat.",
        "What name did you suggest for our coffee Slack channel?",
        "#bean-there-done-that",
    ),
    (
        "What can I do about my squeaky bedroom door?",
        "Lift the hinge pins and rub them with a bar of soap or a bit of WD-40, then tap them back in.",
        "How did you say to fix the squeaky door?",
        "soap or WD-40 on hinge pins",
    ),
    (
        "How do I keep cut flowers fresh longer?",
        "Trim the stems at an angle every two days, change the water, and keep them away from the fruit bowl.",
        "How did you say to keep cut flowers fresh?",
        "trim at an angle, change water, away from fruit",
    ),
    (
        "Can you help me pick a font for my CV?",
        "Source Sans or Inter at 10.5 points look clean and read well in applicant tracking systems.",
        "Which font did you recommend for my CV?",
        "Source Sans or Inter",
    ),
]

# The user and the assistant both speak about a topic; questions name the speaker.
# (user turn, assistant turn, question about the user's words, question about the assistant's words)
SPEAKER_PAIRS: list[tuple[str, str, str, str]] = [
    (
        "My knee has been aching, I think it's from running on concrete every morning.",
        "For the knee, strengthen your quads with wall sits and move some runs to softer trails.",
        "What did I say was causing my knee pain?",
        "What did the assistant recommend for my knee?",
    ),
    (
        "I'm nervous about the presentation because my slides are too text-heavy.",
        "For the presentation, cut each slide to one idea and rehearse out loud twice.",
        "What did I say was worrying me about the presentation?",
        "What did the assistant suggest for the presentation?",
    ),
    (
        "The garden tomatoes keep splitting, I water them every evening.",
        "Split tomatoes usually mean uneven watering; water deeply twice a week in the morning instead.",
        "What did I tell you about how I water the tomatoes?",
        "What did the assistant say causes the tomatoes to split?",
    ),
    (
        "I think my laptop fan is loud because I run Docker all day.",
        "Check Activity Monitor for runaway containers and raise the laptop on a stand for airflow.",
        "What did I say makes my laptop fan loud?",
        "What did the assistant suggest about the laptop fan?",
    ),
    (
        "Our daughter hates the swimming lessons, she says the water is too cold.",
        "Try a heated indoor pool and a short-term goal like earning one badge.",
        "What did I say our daughter dislikes about swimming?",
        "What did the assistant propose for the swimming lessons?",
    ),
    (
        "I keep forgetting to take my vitamins, I leave them in the kitchen cabinet.",
        "Put the vitamins next to your toothbrush so the habit piggybacks on brushing.",
        "Where did I say I keep my vitamins?",
        "What did the assistant advise so I remember the vitamins?",
    ),
    (
        "My sister and I argued about the holiday plans because she wants to host again.",
        "About the holiday plans, suggest alternating hosts each year and write it down.",
        "What did I say the holiday argument with my sister was about?",
        "What did the assistant recommend about the holiday plans?",
    ),
    (
        "I'm thinking of quitting piano because practice feels like a chore.",
        "For piano, switch to songs you love and practise fifteen minutes right after dinner.",
        "Why did I say I wanted to quit piano?",
        "What did the assistant suggest to keep me playing piano?",
    ),
    (
        "The neighbours' dog barks all night and I've barely slept this week.",
        "For the barking, talk to the neighbours in person first and try white noise earplugs meanwhile.",
        "What did I complain about regarding the neighbours' dog?",
        "What did the assistant say I should do about the barking?",
    ),
    (
        "I want to repaint the living room but I can't decide between sage and navy.",
        "For the living room, sage will keep it bright; use navy on one accent wall if you want drama.",
        "What colours did I say I was torn between for the living room?",
        "Which colour did the assistant favour for the living room?",
    ),
    (
        "My sourdough starter smells like nail polish remover.",
        "That acetone smell means the starter is hungry: feed it twice a day at a 1:1:1 ratio.",
        "What did I say my starter smelled like?",
        "What did the assistant tell me to do with my starter?",
    ),
    (
        "I think I'm spending too much on takeout, maybe 400 a month.",
        "To cut the takeout bill, batch-cook two dinners on Sunday and keep a frozen backup meal.",
        "How much did I say I spend on takeout?",
        "What did the assistant suggest to reduce takeout?",
    ),
    (
        "My manager never gives feedback and I don't know where I stand.",
        "Ask your manager for a monthly fifteen-minute feedback slot with two specific questions.",
        "What did I say about my manager and feedback?",
        "What did the assistant recommend asking my manager?",
    ),
    (
        "I'm bored with my running routine, it's the same loop every day.",
        "Mix the running routine up: one interval day, one hill day, and a new route each weekend.",
        "What did I say was boring about my running?",
        "How did the assistant suggest changing my running routine?",
    ),
    (
        "Our car makes a grinding noise when I brake downhill.",
        "A grinding noise when braking usually means worn pads; get the brakes checked this week.",
        "When did I say the car makes a grinding noise?",
        "What did the assistant think the grinding noise was?",
    ),
    (
        "I want to read more but I only manage a few pages before falling asleep.",
        "To read more, swap the evening session for twenty minutes at lunch, and try audiobooks on walks.",
        "What did I say happens when I try to read?",
        "What did the assistant suggest to help me read more?",
    ),
    (
        "The kids fight over the tablet every evening.",
        "For the tablet fights, use a visible timer and give each kid a fixed slot.",
        "What did I say the kids fight about?",
        "What did the assistant recommend for the tablet fights?",
    ),
    (
        "I'm worried my houseplants are dying because the apartment is dark.",
        "For a dark apartment, pick pothos and ZZ plants and add a cheap grow light.",
        "What did I say about my apartment and the houseplants?",
        "Which plants did the assistant suggest for a dark apartment?",
    ),
    (
        "I can't focus at home because my desk faces the TV.",
        "Turn the desk to face a wall or window and keep a closed door during work blocks.",
        "What did I say was distracting me at my desk?",
        "What did the assistant suggest about my desk?",
    ),
    (
        "My son says the math homework is pointless and refuses to do it.",
        "For the math homework, link it to something he likes, such as working out football statistics together.",
        "What did I say my son thinks of his math homework?",
        "How did the assistant suggest motivating my son with math?",
    ),
    (
        "I get a headache every afternoon around three at the office.",
        "An afternoon headache is often dehydration or screen glare; drink water at lunch and lower the brightness.",
        "When did I say my headaches start?",
        "What did the assistant think might cause my headaches?",
    ),
]


# --------------------------------------------------------------------------- filler

FILLER_EXCHANGES: list[tuple[str, str]] = [
    (
        "Can you explain what a Python decorator is?",
        "A decorator is a function that takes another function and returns a wrapped version, used with @ syntax.",
    ),
    (
        "What's the difference between a list and a tuple?",
        "Lists are mutable and tuples are immutable; tuples can be dictionary keys.",
    ),
    (
        "How do I undo my last git commit but keep the changes?",
        "Run git reset --soft HEAD~1; your changes stay staged.",
    ),
    (
        "Give me a quick dinner idea with chicken and rice.",
        "A one-pan chicken and rice with garlic, lemon and peas takes about thirty minutes.",
    ),
    (
        "What's the weather usually like in spring where I live?",
        "I can't check live weather, but spring is usually mild with frequent showers in most temperate places.",
    ),
    (
        "Can you summarise the plot of Hamlet in two sentences?",
        "Prince Hamlet seeks revenge on his uncle, who murdered his father and married his mother. "
        "Hesitation and deception lead to the deaths of nearly everyone.",
    ),
    (
        "I need a polite way to decline a meeting.",
        "Try: 'Thanks for including me; I can't make this one, but please share the notes and I'll follow up.'",
    ),
    (
        "Write a haiku about autumn.",
        "Maple leaves let go / the wind keeps none of their names / soft rain on the path.",
    ),
    ("How many grams are in a cup of flour?", "Roughly 120 to 125 grams of all-purpose flour per cup."),
    (
        "What's a good stretch after sitting all day?",
        "Stand up and do a doorway chest stretch for thirty seconds, then a few hip flexor lunges.",
    ),
    ("Remind me what the capital of Australia is.", "Canberra."),
    ("How do I convert Celsius to Fahrenheit?", "Multiply by 9/5 and add 32."),
    (
        "Can you proofread this sentence: 'Their going to the store tomorow.'",
        "It should be: 'They're going to the store tomorrow.'",
    ),
    ("What's a fun fact about octopuses?", "Octopuses have three hearts and blue blood."),
    (
        "Help me write a birthday message for a coworker.",
        "Happy birthday! Thanks for making the office brighter; hope your day is full of cake and zero meetings.",
    ),
    (
        "How long should I boil an egg for a runny yolk?",
        "About six and a half minutes from boiling, then into ice water.",
    ),
    (
        "What's the best way to learn keyboard shortcuts?",
        "Pick three a week, put them on a sticky note, and force yourself to use them.",
    ),
    (
        "Is it worth buying an air fryer?",
        "If you cook for one or two and like crispy food without much oil, yes.",
    ),
    (
        "Explain compound interest simply.",
        "You earn interest on your interest, so growth speeds up over time.",
    ),
    ("What should I do with overripe bananas?", "Banana bread, smoothies, or freeze them for ice cream."),
    (
        "Can you recommend a way to organise my inbox?",
        "Three folders: action, waiting, archive. Touch each email once and file it.",
    ),
    ("What's a good playlist for focusing?", "Lo-fi beats or film scores without lyrics tend to work well."),
    (
        "How do I center a div in CSS?",
        "Use display: flex with justify-content: center and align-items: center on the parent.",
    ),
    ("Tell me a joke.", "Why did the scarecrow win an award? He was outstanding in his field."),
    (
        "What's the difference between weather and climate?",
        "Weather is day to day; climate is the long-term average.",
    ),
    (
        "How can I make my mornings less rushed?",
        "Prepare clothes and lunch the night before and put your phone in another room.",
    ),
    ("What does HTTP 404 mean?", "The server couldn't find the requested resource."),
    (
        "Is it okay to water plants with tap water?",
        "Usually yes; let it sit overnight if your water is heavily chlorinated.",
    ),
    (
        "Suggest a weekend activity for a rainy day.",
        "A museum visit, a board game afternoon, or baking something new.",
    ),
    (
        "How do I write a SQL query to count rows per category?",
        "SELECT category, COUNT(*) FROM items GROUP BY category;",
    ),
    (
        "What's a quick way to cool down a hot room?",
        "Close blinds during the day and open windows on opposite sides at night.",
    ),
    (
        "What is the Pomodoro technique?",
        "Work for 25 minutes, break for 5, and take a longer break after four rounds.",
    ),
    (
        "How do I politely remind someone about money they owe me?",
        "Keep it light: 'Hey, just a reminder about the 40 from dinner, no rush this week.'",
    ),
    (
        "What's the time difference between London and New York?",
        "New York is usually five hours behind London.",
    ),
    (
        "Explain what an API is.",
        "An API is a contract that lets one program ask another for data or actions.",
    ),
    ("Can you give me a mnemonic for the planets?", "My Very Educated Mother Just Served Us Nachos."),
    ("How often should I change my toothbrush?", "Every three months, or sooner if the bristles fray."),
    (
        "How do I make cold brew?",
        "Coarse grounds and cold water at 1:8, steep 16 hours in the fridge, then strain.",
    ),
    ("What's a good icebreaker for a team meeting?", "Ask everyone for one small win from their week."),
    ("Why is the sky blue?", "Air scatters short blue wavelengths of sunlight more than red ones."),
    (
        "Write a short out-of-office message.",
        "I'm away until Monday with limited access to email. For anything urgent, please contact the team inbox.",
    ),
    (
        "How do I stop procrastinating?",
        "Make the first step tiny, like opening the document, and set a ten-minute timer.",
    ),
    ("What's the rule for using 'fewer' versus 'less'?", "Fewer for things you can count, less for amounts."),
    ("Can I freeze cooked pasta?", "Yes, toss it with a little oil first and freeze in portions."),
    (
        "What are good questions to ask at the end of an interview?",
        "Ask what success looks like in six months and what the team struggles with.",
    ),
    (
        "How do I clean my laptop screen?",
        "Power off, use a microfibre cloth slightly damp with water, no sprays directly.",
    ),
]

SMALL_TALK_USER = [
    "Long day today.", "Morning! Coffee first.", "Back again, quick question later.", "Thanks, that helped a lot.",
    "Ok, makes sense.", "Hmm, let me think about that.", "Good point.", "Haha, fair enough.", "Cool, thanks!",
    "I'll try that tonight.", "That's what I figured.", "Sorry, got distracted by a call.",
    "The weather is miserable today.", "I finally cleaned the garage this weekend.", "Work is busy this week.",
]  # fmt: skip
SMALL_TALK_ASSISTANT = [
    "Glad to help!", "Take your time.", "Sounds good.", "Happy to help whenever you need.", "Let me know how it goes.",
    "No problem at all.", "That's understandable.", "Good luck with it!", "Anything else on your mind?",
    "I'm here if you need anything.",
]  # fmt: skip

# Filler that mentions the people without stating a fact, so names alone do not find the answer.
PEOPLE_CHATTER = [
    "I had lunch with {name} today, nothing special, just caught up.",
    "{name} called about the weekend plans, we still haven't decided anything.",
    "My {relation} sent me a funny video this morning.",
    "Going to see my {relation} {name} on Sunday.",
    "{name} says hi, by the way.",
    "I need to call my {relation} back at some point.",
]
PEOPLE_CHATTER_REPLY = [
    "That sounds nice. Say hi to {name} from me!",
    "Sounds like a good plan.",
    "Family time is always good.",
    "Enjoy the visit!",
]


# Templated filler, so the conversation is not made of a few dozen repeated exchanges.
FILLER_TEMPLATES: list[tuple[str, str, dict[str, list[str]]]] = [
    (
        "How do I say '{phrase}' in {language}?",
        "In {language} you could say it like a native would; want me to break down the pronunciation of '{phrase}'?",
        {
            "phrase": [
                "good morning",
                "where is the station",
                "the bill, please",
                "nice to meet you",
                "I'm lost",
                "how much is this",
                "see you tomorrow",
            ],
            "language": ["French", "Dutch", "Greek", "Turkish", "Swedish", "Polish"],
        },
    ),
    (
        "Can you give me a recipe for {dish}?",
        "Sure: for {dish} you'll want about {minutes} minutes; start by prepping everything before you turn on the heat.",
        {
            "dish": [
                "lentil soup",
                "banana pancakes",
                "shakshuka",
                "pad thai",
                "mushroom risotto",
                "chili con carne",
                "tuna pasta bake",
                "vegetable curry",
                "focaccia",
            ],
            "minutes": ["20", "30", "45", "60", "90"],
        },
    ),
    (
        "My {thing} is acting up again, {symptom}.",
        "That's annoying. With a {thing} that {symptom_short}, a restart or a quick clean often fixes it.",
        {
            "thing": ["printer", "router", "dishwasher", "washing machine", "bluetooth speaker", "e-reader"],
            "symptom": [
                "it keeps blinking",
                "it makes a weird noise",
                "it won't turn on sometimes",
                "it's really slow",
            ],
            "symptom_short": ["misbehaves"],
        },
    ),
    (
        "What's a good {kind} for {occasion}?",
        "For {occasion}, something simple and personal usually beats anything expensive.",
        {
            "kind": ["card message", "toast", "playlist", "outfit"],
            "occasion": [
                "a wedding",
                "a retirement party",
                "a housewarming",
                "a graduation",
                "a baby shower",
            ],
        },
    ),
    (
        "Can you explain {concept} like I'm five?",
        "Imagine {concept} as a game with simple rules; once you see the rules, the rest follows.",
        {
            "concept": [
                "inflation",
                "blockchain",
                "photosynthesis",
                "black holes",
                "vaccines",
                "machine learning",
                "the stock market",
                "gravity",
                "recursion",
            ]
        },
    ),
    (
        "I watched {show} last night.",
        "Oh, {show}! What did you think of it?",
        {
            "show": [
                "a documentary about deep-sea fish",
                "the new season of that cooking competition",
                "an old Hitchcock film",
                "a stand-up special",
                "a nature series about deserts",
                "a heist movie",
            ]
        },
    ),
]


def _templated_exchange(rng: random.Random) -> tuple[str, str]:
    user, assistant, slots = rng.choice(FILLER_TEMPLATES)
    values = {name: rng.choice(options) for name, options in slots.items()}
    return user.format(**values), assistant.format(**values)


# Openers and closers so the same request is not repeated word for word (people rephrase; so do models).
USER_OPENERS = [
    "", "", "", "Quick question: ", "Hey, ", "Random one: ", "Okay, another thing. ", "Sorry if I asked before, ",
    "Before I forget, ", "So, ", "Hmm, ", "Can I ask something? ", "Morning! ", "Back again. ",
]  # fmt: skip
ASSISTANT_OPENERS = [
    "", "", "", "Sure! ", "Good question. ", "Of course. ", "Happy to help. ", "Short answer: ", "Right, so: ",
    "No worries. ",
]  # fmt: skip
ASSISTANT_CLOSERS = [
    "", "", "", " Hope that helps.", " Want more detail?", " Let me know if you try it.",
    " I can go deeper if you like.", " Does that answer it?",
]  # fmt: skip
WHEN = ["today", "yesterday", "this morning", "last night", "on Saturday", "after work", "over the weekend"]
OUTINGS = [
    "had lunch",
    "grabbed coffee",
    "went for a walk",
    "had dinner",
    "watched a film",
    "did the shopping",
]
CHATTER_COMMENTS = [
    "nothing special, just caught up", "it was nice to see them", "we talked about nothing in particular",
    "it ran late", "the place was packed", "good to get out of the house", "we mostly complained about work",
]  # fmt: skip
SMALL_TALK_DETAILS = [
    "the trains were late again", "I slept badly", "it's been raining all day", "my inbox is a mess",
    "I finally cleaned the garage", "work is hectic this week", "I'm on my third coffee", "the heating broke",
    "I went for a run before work", "the neighbours are renovating",
]  # fmt: skip


def _vary_exchange(rng: random.Random, user: str, assistant: str) -> list[tuple[str, str]]:
    opener = rng.choice(USER_OPENERS)
    if opener and user[:1].isupper() and not user.startswith("I "):
        user = user[0].lower() + user[1:]
    reply = rng.choice(ASSISTANT_OPENERS) + assistant + rng.choice(ASSISTANT_CLOSERS)
    return [("user", opener + user), ("assistant", reply)]


def _small_talk(rng: random.Random) -> list[tuple[str, str]]:
    if rng.random() < 0.5:
        user = rng.choice(SMALL_TALK_USER)
    else:
        user = f"{rng.choice(['Ugh,', 'Well,', 'Honestly,', 'Long story short,'])} {rng.choice(SMALL_TALK_DETAILS)}."
    return [("user", user), ("assistant", rng.choice(SMALL_TALK_ASSISTANT))]


def _filler_block(rng: random.Random, people: list[tuple[str, str, str, str]]) -> list[tuple[str, str]]:
    roll = rng.random()
    if roll < 0.35:
        return _vary_exchange(rng, *_templated_exchange(rng))
    if roll < 0.65:
        block = _vary_exchange(rng, *rng.choice(FILLER_EXCHANGES))
        if rng.random() < 0.3:
            block += _small_talk(rng)
        return block
    if roll < 0.82:
        relation, name, _, _ = rng.choice(people)
        if rng.random() < 0.5:
            who = rng.choice([name, f"my {relation}", f"my {relation} {name}"])
            user = f"I {rng.choice(OUTINGS)} with {who} {rng.choice(WHEN)}, {rng.choice(CHATTER_COMMENTS)}."
        else:
            user = rng.choice(PEOPLE_CHATTER).format(name=name, relation=relation)
        return [("user", user), ("assistant", rng.choice(PEOPLE_CHATTER_REPLY).format(name=name))]
    return _small_talk(rng)


# --------------------------------------------------------------------------- assembly


def generate_dataset(
    seed: int = 7,
    *,
    sessions: int = 50,
    filler_blocks_per_session: tuple[int, int] = (12, 24),
    start_date: dt.date = dt.date(2025, 1, 6),
) -> RetrievalDataset:
    """Generate the conversation and its questions; the same seed always gives the same dataset.

    Args:
        seed: Random seed.
        sessions: Number of sessions (>= 10).
        filler_blocks_per_session: Inclusive range of filler exchanges added to each session.
        start_date: Date of the first session; later sessions follow every 3 to 10 days.
    """
    if sessions < 10:
        raise ValueError(f"sessions: got {sessions}; allowed an integer >= 10")
    rng = random.Random(seed)
    episodes: list[_Episode] = []
    pending: list[_PendingQuestion] = []

    def statement_episode(text: str, *, lo: int = 0, hi: int = sessions - 1) -> _Episode:
        episode = _Episode([("user", text), ("assistant", rng.choice(ACKS))], lo, hi)
        episodes.append(episode)
        return episode

    # People facts: single statements (paraphrase); for half the people job and city change (updated).
    people = list(PEOPLE)
    changing = set(rng.sample(range(len(people)), len(people) // 2))
    spare_jobs = [job for job in JOBS[len(people) :]]
    spare_cities = [city for city in CITIES[len(people) :]]
    rng.shuffle(spare_jobs)
    rng.shuffle(spare_cities)
    for person, attribute, statement, question, answer in _person_facts(rng, people):
        index = int(person)
        if index in changing and attribute in ("job", "city"):
            relation, name, pronoun, _ = people[index]
            be = "are" if pronoun == "they" else "is"
            if attribute == "job":
                old_job, old_org = spare_jobs.pop()
                old = f"My {relation} {name} works as a {old_job} at {old_org}, honestly {pronoun} {be} a bit burned out."
            else:
                old = (
                    f"My {relation} {name} lives in {spare_cities.pop()} and loves the little harbour there."
                )
            first = statement_episode(old, hi=sessions // 2 - 1)
            # the newer statement, phrased as a change
            newer_text = statement.replace("got hired as", "quit and got hired as").replace(
                "signed a lease", "moved out and signed a lease"
            )
            second = statement_episode(newer_text, lo=sessions // 2)
            pending.append(_PendingQuestion(question, "updated", answer, [(second, 0)], [(first, 0)]))
        else:
            episode = statement_episode(statement)
            pending.append(_PendingQuestion(question, "paraphrase", answer, [(episode, 0)]))

    # User facts that change: 2 or 3 stages in increasing session ranges.
    for templates, values, question in USER_UPDATES:
        stages = len(templates)
        chosen = rng.sample(values, stages)
        span = sessions // stages
        staged = [
            statement_episode(template.format(v=value), lo=stage * span, hi=(stage + 1) * span - 1)
            for stage, (template, value) in enumerate(zip(templates, chosen, strict=True))
        ]
        pending.append(
            _PendingQuestion(
                question, "updated", chosen[-1], [(staged[-1], 0)], [(e, 0) for e in staged[:-1]]
            )
        )

    # Near-duplicate groups.
    for template, members in DISTRACTOR_GROUPS:
        for item, detail, question in members:
            episode = statement_episode(template.format(item=item, detail=detail))
            pending.append(_PendingQuestion(question, "distractor", f"{item}: {detail}", [(episode, 0)]))

    # Answer in the next (assistant) turn.
    for request, reply, question, answer in NEXT_TURN:
        episode = _Episode([("user", request), ("assistant", reply)], 0, sessions - 1)
        if rng.random() < 0.5:
            episode.turns += [
                ("user", rng.choice(SMALL_TALK_USER)),
                ("assistant", rng.choice(SMALL_TALK_ASSISTANT)),
            ]
        episodes.append(episode)
        pending.append(_PendingQuestion(question, "next_turn", answer, [(episode, 1)]))

    # Speaker-named questions.
    for user_text, assistant_text, user_question, assistant_question in SPEAKER_PAIRS:
        episode = _Episode([("user", user_text), ("assistant", assistant_text)], 0, sessions - 1)
        episodes.append(episode)
        pending.append(_PendingQuestion(user_question, "speaker", user_text, [(episode, 0)]))
        pending.append(_PendingQuestion(assistant_question, "speaker", assistant_text, [(episode, 1)]))

    # Place episodes into sessions, then fill and number the turns.
    per_session: list[list[_Episode]] = [[] for _ in range(sessions)]
    for episode in episodes:
        per_session[rng.randint(episode.min_session, min(episode.max_session, sessions - 1))].append(episode)

    turns: list[Turn] = []
    date = start_date
    for session in range(sessions):
        session_id = f"S{session:02d}"
        blocks: list[tuple[list[tuple[str, str]], _Episode | None]] = [
            (_filler_block(rng, people), None) for _ in range(rng.randint(*filler_blocks_per_session))
        ]
        for episode in per_session[session]:
            blocks.insert(rng.randint(0, len(blocks)), (episode.turns, episode))
        turn_index = 0
        for block, episode in blocks:
            for speaker, content in block:
                key = f"{session_id}-T{turn_index:03d}"
                turns.append(
                    Turn(key, session_id, turn_index, speaker, date.isoformat(), content, len(turns))
                )
                if episode is not None:
                    episode.placed.append(key)
                turn_index += 1
        date += dt.timedelta(days=rng.randint(3, 10))

    questions = [
        Question(
            qid=f"Q{number:03d}",
            text=item.text,
            category=item.category,
            evidence=tuple(episode.placed[offset] for episode, offset in item.evidence),
            answer=item.answer,
            stale=tuple(episode.placed[offset] for episode, offset in item.stale),
        )
        for number, item in enumerate(pending)
    ]
    now = dt.datetime.combine(date, dt.time(12, 0))
    return RetrievalDataset(seed=seed, turns=turns, questions=questions, now=now)


def validate_dataset(dataset: RetrievalDataset) -> None:
    """Check the labels: unique keys, evidence exists, stale statements precede the newest, turns alternate."""
    keys = {turn.key for turn in dataset.turns}
    by_key = {turn.key: turn for turn in dataset.turns}
    assert len(keys) == len(dataset.turns), "turn keys are unique"
    for question in dataset.questions:
        assert question.evidence and set(question.evidence) <= keys, question
        for stale in question.stale:
            assert by_key[stale].position < by_key[question.evidence[0]].position, question
    for previous, turn in zip(dataset.turns, dataset.turns[1:], strict=False):
        if previous.session_id == turn.session_id:
            assert previous.speaker != turn.speaker, (previous, turn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--samples", type=int, default=2, help="questions to print per category")
    args = parser.parse_args()
    dataset = generate_dataset(args.seed)
    validate_dataset(dataset)
    sessions = len({turn.session_id for turn in dataset.turns})
    print(
        f"seed {dataset.seed}: {len(dataset.turns)} turns in {sessions} sessions, "
        f"{dataset.turns[0].session_date} .. {dataset.turns[-1].session_date}; questions asked {dataset.now:%Y-%m-%d}"
    )
    print(f"{len(dataset.questions)} questions: {dict(Counter(q.category for q in dataset.questions))}")
    shown: Counter[str] = Counter()
    for question in dataset.questions:
        if shown[question.category] >= args.samples:
            continue
        shown[question.category] += 1
        print(f"\n[{question.category}] {question.qid} {question.text}  -> {question.answer}")
        for key in question.evidence:
            turn = dataset.turn(key)
            print(f"   evidence {key} ({turn.speaker}, {turn.session_date}): {turn.content}")
        for key in question.stale:
            print(f"   stale    {key}: {dataset.turn(key).content}")


if __name__ == "__main__":
    main()
