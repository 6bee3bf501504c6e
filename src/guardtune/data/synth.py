"""Synthetic chat messages (online games, chat apps) for the built-in PII tasks.

Two tasks are generated:

* ``pii-intent`` (single-label, column ``label``): ``none``, ``asking`` or ``giving``.
* ``pii-categories`` (multi-label, column ``labels``): comma-separated codes ``S1``..``S5`` in
  canonical order (name, IP address, phone, street address, credit card); empty means safe.

Each split draws from its own template collection. ``check`` frames never appear in ``train``, so a
model scored on ``check`` is tested on phrasings its training data never used, not on new values
poured into familiar sentences.

Example:
    >>> frame = generate("pii-intent", n=6, seed=0)
    >>> list(frame.columns)
    ['text', 'label']
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import pandas as pd
from faker import Faker

from guardtune.errors import GuardtuneError

Split = Literal["train", "check"]

SYNTH_TASKS: tuple[str, ...] = ("pii-intent", "pii-categories")
SPLITS: tuple[str, ...] = ("train", "check")

INTENT_SHARES: dict[str, float] = {"none": 0.40, "asking": 0.30, "giving": 0.30}
# Share of pii-categories rows with no category, exactly one, and two or more.
CATEGORY_GROUP_SHARES: dict[str, float] = {"safe": 0.35, "one": 0.40, "multi": 0.25}
CATEGORY_CODES: tuple[str, ...] = ("S1", "S2", "S3", "S4", "S5")

# Placeholders whose value is, by itself, a pii-categories category. Labels are derived from the
# placeholders a row was rendered from, so a template can never disagree with its label.
_FIELD_CATEGORY: dict[str, str] = {
    "name": "S1",
    "ip": "S2",
    "phone": "S3",
    "address": "S4",
    "street": "S4",
    "card": "S5",
}

# Enough to escape collisions on value-free templates without looping forever on tiny pools.
_MAX_RETRIES = 30

# ---------------------------------------------------------------------------------------------
# pii-intent templates
# ---------------------------------------------------------------------------------------------

_INTENT_TRAIN_NONE: tuple[str, ...] = (
    "gg {score}, that was close",
    "gg wp everyone",
    "anyone want to queue {game} later?",
    "i just hit level {lvl} in {game}",
    "what level are you?",
    "what's your rank in {game}?",
    "i'm stuck in {rank} again",
    "meet at {place} after the drop",
    "drop at {place}, it's always full of loot",
    "{char} is the best character in this game",
    "{famous} would be terrible at {game}",
    "did you see the {team} game last night?",
    "{famous_city} looks sick in this map",
    "the {server} servers are lagging so bad",
    "that skin costs {price}, way too expensive",
    "we start the raid at {time}",
    "brb dinner, back in {num} minutes",
    "i love this game so much",
    "this update is actually so good",
    "who wants to duo?",
    "can you revive me please?",
    "nice shot!",
    "you got wrecked by a bot",
    "how do you beat the boss on level {lvl}?",
    "my kd is {kd} this season",
    "my main is {char}",
    "my favorite map is {place}",
    "where are you on the map?",
    "i'm at {place}, come help",
    "how old is this game anyway?",
    "what's your favorite weapon?",
    "how many wins do you have?",
    "what server are you on?",
    "my email got hacked last week, be careful with links",
    "never give your address to people online",
    "i don't give out my number to randoms, sorry",
    "the score is {score}, we can still win",
    "i spent {price} on skins this month",
    "{char} vs {char2}, who wins?",
    "{team} are going to win it all this year",
    "patch {version} nerfed my whole build",
    "is the {weapon} still good after the patch?",
    "push {place} now!",
    "rotate to {place}, zone is closing",
    "we need one more for the squad",
    "anyone know how to get the {item}?",
    "{famous} streamed {game} for {num} hours straight",
    "what time does the event start?",
    "the event starts at {time} server time",
    "can we play {game} instead?",
    "your aim is insane",
    "you're cracked at this game",
    "what's your sensitivity?",
    "what's your best score on this map?",
    "i got {num} kills that round",
    "tower {small} is down, push mid",
    "this lobby is full of bots",
    "thanks for the carry!",
    "my wifi is dying, sorry guys",
    "i live for these clutch moments",
    "call it, where are they?",
    "{char}'s new skin is fire",
    "the new {game} trailer just dropped",
    "we're down {score}, don't give up",
    "is anyone else's game crashing?",
    "who's your favorite {game} streamer?",
    "how long have you been playing?",
    "where did you get that skin?",
    "i'm so bad at {game} lol",
    "just got the {item}, finally",
    "{famous} is coming to {famous_city} for a show",
    "i have {num} vbucks left",
)

_INTENT_TRAIN_ASKING: tuple[str, ...] = (
    "what's your {social}?",
    "do you have {social}?",
    "can i get your {social}?",
    "drop your {social} in chat",
    "send me your {social} so we can talk",
    "what's your phone number?",
    "can you give me your number?",
    "what's your number, i'll text you",
    "what's your email?",
    "can you send me your email address?",
    "where do you live?",
    "what city do you live in?",
    "do you live near {city}?",
    "what's your address? i want to send you something",
    "how old are you?",
    "what's your real name?",
    "what's your full name?",
    "what school do you go to?",
    "which school are you at?",
    "are you on {social}? what's your username?",
    "what's your {social} username?",
    "give me your {social} and i'll add you",
    "can i have your phone number for later?",
    "text me, what's your number?",
    "do you have a phone number i can call?",
    "what's your last name?",
    "what's your first name?",
    "is {first} your real name?",
    "what's your birthday?",
    "when were you born?",
    "what grade are you in?",
    "what state are you from?",
    "what street do you live on?",
    "what's your zip code?",
    "can we talk somewhere other than the game? what's your {social}?",
    "how can i contact you outside of {game}?",
    "who are you in real life?",
    "dm me your number",
    "pm me your address",
    "tell me your email so i can send the files",
    "what's your gmail?",
    "can i add you on {social}? what's your name on there?",
    "what's your home address?",
    "what part of {city} do you live in?",
    "do you go to {school}?",
    "i need your email to send the invite",
    "where are you from irl?",
    "what country do you live in?",
    "what's your real age?",
    "write your number here and i'll call you",
    "send me your {social} @",
    "you got {social}? add me back, what's the name?",
    "are you really {age}? how old are you actually?",
    "what town is your house in?",
)

_INTENT_TRAIN_GIVING: tuple[str, ...] = (
    "my email is {email}",
    "my number is {phone}",
    "hit me up at {phone}",
    "text me at {phone}",
    "call me: {phone}",
    "my {social} is {user}",
    "add me on {social}: {user}",
    "i'm {user} on {social}",
    "i live at {street}",
    "i live in {city}",
    "my address is {address}",
    "send it to {address}",
    "my real name is {name}",
    "i'm {name} btw",
    "my name's {first}",
    "i'm {age} years old",
    "i'm {age}",
    "i go to {school}",
    "i'm in {grade} grade at {school}",
    "email me at {email}",
    "you can reach me at {email}",
    "here's my number {phone}, text me later",
    "my insta is @{user}",
    "follow me on {social} @{user}",
    "i'm from {city}, {state}",
    "my birthday is {bday}",
    "born on {bday}",
    "my zip is {zip}",
    "{phone} is my cell",
    "{email} is my email, message me there",
    "my phone is {phone}, whatsapp works too",
    "i'm {age} and i live in {city}",
    "my full name is {name}",
    "call me {first} irl",
    "dm me on {social}, it's {user}",
    "i live on {street} in {city}",
    "come over, my address is {address}",
    "my mom's number is {phone} if i don't answer",
    "my gmail is {email}",
    "my snap: {user}",
    "you can find me on {social} as {user}",
    "i'm in {city}, near {street}",
    "i'm a {grade} grader at {school}",
    "my work email is {email}",
    "my other number is {phone}",
    "ok here: {phone}",
    "it's {email}, send the invite there",
    "name's {name}, nice to meet you",
    "i'm {first}, from {city}",
    "my irl name is {first}",
    "my address for the giveaway: {address}",
    "i turn {age} next week",
    "add me on {social} its {user} we can talk there",
)

_INTENT_CHECK_NONE: tuple[str, ...] = (
    "that was a crazy comeback, {score} final",
    "anyone else think {char} is overpowered",
    "how long did it take you to reach {rank}?",
    "lets regroup at {place}",
    "{famous} is way better than {famous2} tbh",
    "{team} lost again, unbelievable",
    "{famous_city} in the new expansion is gorgeous",
    "servers go down at {time} for maintenance",
    "is the battle pass worth {price}?",
    "whats ur main these days",
    "anyone got tips for the {char} boss fight?",
    "on level {lvl} and still no legendary drop",
    "cant believe we lost {score}",
    "who's carrying this team lol",
    "got my first win today!!",
    "the graphics in {game} are unreal",
    "which loadout are you running?",
    "how many hours u got in {game}?",
    "heading to {place}, cover me",
    "i keep getting matched with {server} players",
    "this song in the lobby slaps",
    "what do you think of the new patch?",
    "what's the best class for beginners?",
    "does anyone actually use the {weapon}",
)

_INTENT_CHECK_ASKING: tuple[str, ...] = (
    "u got a number i can text?",
    "how do i reach u outside the game",
    "so whats ur {social} at?",
    "any chance you'd share your {social}?",
    "whereabouts are you based?",
    "which town do you actually live in?",
    "we should talk more, how can i find u on {social}?",
    "got an email i can send the clips to?",
    "mind telling me how old u are?",
    "what do your friends call you irl?",
    "u in middle school or high school? which one?",
    "whats the best way to contact u when ur offline",
    "can u write down ur home address for the prize?",
    "i wanna send u a gift, where should i ship it?",
    "if i wanted to call u what number would i use",
    "r u on whatsapp? whats the digits",
    "would u mind sharing ur last name",
    "u near {city} by any chance? what street?",
    "what year were u born",
    "whats the @ for ur {social}",
    "hey do u have a cell i can reach u on",
    "tell me where u live and ill come say hi",
)

_INTENT_CHECK_GIVING: tuple[str, ...] = (
    "just text {phone} whenever",
    "shoot me an email, {email}",
    "find me on {social} -> {user}",
    "{user} on {social}, add me",
    "the digits are {phone}",
    "we moved to {street} last month",
    "my house is the blue one at {address}",
    "real name {name} lol",
    "turning {age} this year",
    "i'm at {school}, {grade} grade",
    "reach me at {phone} after 6",
    "{email} - send it there",
    "u can ship it to {address}",
    "irl i'm {name}",
    "bday is {bday} if u wanna know",
    "i stay in {city} near the mall",
    "drop me a message on {social}, i'm {user}",
    "ping me on {phone} if the server dies",
    "contact: {email}",
    "we live right by {street}, {city}",
    "whatsapp me {phone}",
    "just moved to {city}, still unpacking",
)

_INTENT_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "none": _INTENT_TRAIN_NONE,
        "asking": _INTENT_TRAIN_ASKING,
        "giving": _INTENT_TRAIN_GIVING,
    },
    "check": {
        "none": _INTENT_CHECK_NONE,
        "asking": _INTENT_CHECK_ASKING,
        "giving": _INTENT_CHECK_GIVING,
    },
}

# ---------------------------------------------------------------------------------------------
# pii-categories templates: one clause pool per category, multi-category frames, and safe rows
# ---------------------------------------------------------------------------------------------

_CATEGORY_TRAIN_SAFE: tuple[str, ...] = (
    "gg {score}",
    "final score {score}, what a match",
    "update to version {version} before the match",
    "patch {version} is live now",
    "build {build} crashes on startup",
    "order {order} shipped today",
    "my order number is {order}",
    "ticket {order} has been resolved",
    "meet at {place}",
    "drop {place} this round",
    "the level {lvl} boss is impossible",
    "the bundle costs {price}",
    "raid starts at {time}",
    "{char} is so op right now",
    "we play on {server}",
    "i got {num} kills",
    "my high score is {bigscore}",
    "{famous_city} is a great city to visit",
    "i'm from {city}",
    "ask {first} about the raid",
    "{star} scored again tonight",
    "{team} won {score} last night",
    "lobby code is {code}",
    "use code {promo} for 10% off",
    "my gamertag is {user}",
    "it's {temp} degrees outside",
    "{year} was the best year for gaming",
    "chapter {small}, season {small2} was peak",
    "ping is {ms}ms on {server}",
    "fps dropped to {num} after the update",
    "my base is at {coords}",
    "coords for the village: {coords}",
    "the meeting is on {date}",
    "bus {num} is late again",
    "{pct} of players quit before level {lvl}",
    "i paid {price} with my card",
    "my phone died at {pct}",
    "call me later, busy now",
    "my address changed, i'll update it in settings",
    "the ip ban finally got lifted",
    "release date is {date}",
    "the item id is {itemid}",
    "route {num} is closed for repairs",
    "page {num}, question {small}",
    "this game is way too much fun",
    "who wants to run {game} tonight?",
    "does the {weapon} still slap?",
    "room {room} for the tournament",
    "{char} and {char2} would be a great duo",
    "level up to {lvl} for the reward",
    "the stream hit {bigscore} viewers",
    "lost my card again, had to cancel it",
)

_CATEGORY_TRAIN_CLAUSES: dict[str, tuple[str, ...]] = {
    "S1": (
        "my name is {name}",
        "this is {name} speaking",
        "{name} here, nice to meet you",
        "the account belongs to {name}",
        "please ask for {name} at the front desk",
        "sign it as {name}",
        "i talked to {name} yesterday about the project",
        "her full name is {name}",
        "tell {name} i said thanks",
        "the package is for {name}",
        "it's registered under {name}",
        "{name} is my cousin",
    ),
    "S2": (
        "my ip is {ip}",
        "connect to {ip} for the server",
        "ping {ip} and tell me the latency",
        "i got banned from {ip}",
        "the router is at {ip}",
        "whitelist {ip} please",
        "someone from {ip} keeps spamming",
        "his ip address is {ip}",
        "the host machine is {ip}",
        "ssh into {ip}",
    ),
    "S3": (
        "call me at {phone}",
        "my number is {phone}",
        "text {phone} for details",
        "reach the office at {phone}",
        "her cell is {phone}",
        "phone: {phone}",
        "my new number {phone}",
        "leave a voicemail at {phone}",
        "whatsapp {phone}",
        "hmu at {phone}",
    ),
    "S4": (
        "i live at {address}",
        "ship it to {address}",
        "the party is at {address}",
        "my address is {address}",
        "send the letter to {address}",
        "we moved to {address}",
        "pick me up at {street}",
        "deliver to {address}",
        "my house is {street}",
    ),
    "S5": (
        "my card number is {card}",
        "use card {card} for the order",
        "charge it to {card}",
        "here's my visa {card}",
        "card: {card} exp {exp}",
        "pay with {card}, cvv {cvv}",
        "my credit card is {card}",
        "the debit card is {card}",
    ),
}

_CATEGORY_TRAIN_MULTI: tuple[str, ...] = (
    "{name}, {address}, {phone}",
    "ship to {name} at {address}",
    "i'm {name}, call me at {phone}",
    "{name} - card {card}",
    "billing: {name}, {card}, {address}",
    "contact {name} on {phone}",
    "my ip is {ip} and my number is {phone}",
    "name: {name} phone: {phone}",
    "{name} lives at {address}",
    "card {card}, billing address {address}",
    "login from {ip} by {name}",
    "send it to {address} or call {phone}",
)

_CATEGORY_CHECK_SAFE: tuple[str, ...] = (
    "we won {score} in overtime",
    "client {version} is out",
    "my parcel {order} is delayed",
    "invoice {order} is paid",
    "rally at {place}",
    "{char} got nerfed hard",
    "{team} need a new coach",
    "lobby opens at {time}",
    "hit {bigscore} points last night",
    "spawn is at {coords}",
    "paid {price} for this skin with my card",
    "my ping is {ms} on {server}",
    "{star} is the goat",
    "use promo {promo} at checkout",
    "what's your ip lol, just kidding",
    "got a new phone, the camera is nuts",
    "moved house last month, still unpacking",
    "my cousin {first} is visiting",
    "{pct} battery left",
    "season {small} drops {date}",
    "hotfix {build} fixed the crash",
)

_CATEGORY_CHECK_CLAUSES: dict[str, tuple[str, ...]] = {
    "S1": (
        "the form was signed by {name}",
        "shoutout to my teacher {name}",
        "contact person: {name}",
        "{name} left their bag in the lobby",
        "writing on behalf of {name}",
        "full legal name {name}",
        "our new neighbor is {name}",
    ),
    "S2": (
        "the log shows a login from {ip}",
        "the game server runs on {ip}",
        "blocked {ip} on the firewall",
        "traceroute stops at {ip}",
        "his connection comes from {ip}",
        "try {ip} instead of localhost",
        "that ddos came from {ip}",
    ),
    "S3": (
        "ring me on {phone}",
        "my mobile's {phone}",
        "the number to call is {phone}",
        "{phone} - that's my cell",
        "support line: {phone}",
        "if i don't answer try {phone}",
        "digits: {phone}",
    ),
    "S4": (
        "staying at {address} this week",
        "the return label says {address}",
        "our office moved to {address}",
        "the house at {address} is for sale",
        "mail goes to {address}",
        "you can find us at {street}",
        "grandma lives at {address}",
    ),
    "S5": (
        "card no. {card}",
        "the number on my visa is {card}",
        "just paid with {card}, did it go through?",
        "billing card {card} exp {exp}",
        "mastercard {card} cvc {cvv}",
        "is {card} a valid card number?",
        "refund it to {card}",
    ),
}

_CATEGORY_CHECK_MULTI: tuple[str, ...] = (
    "{name} / {phone} / {address}",
    "reservation for {name}, callback {phone}",
    "cardholder {name} {card}",
    "ip {ip} belongs to {name}",
    "{address} - ring {phone} at the gate",
    "charge {card} and send the receipt to {address}",
)

_CATEGORY_TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "safe": _CATEGORY_TRAIN_SAFE,
        **_CATEGORY_TRAIN_CLAUSES,
        "multi": _CATEGORY_TRAIN_MULTI,
    },
    "check": {
        "safe": _CATEGORY_CHECK_SAFE,
        **_CATEGORY_CHECK_CLAUSES,
        "multi": _CATEGORY_CHECK_MULTI,
    },
}

# Joins clauses into one message; shared by both splits because it is glue, not a sentence frame.
_CONNECTORS: tuple[str, ...] = (". ", ", ", " and ", ". also ", " - ", "; ", " | ", "! ", " btw ")

# ---------------------------------------------------------------------------------------------
# Value fillers
# ---------------------------------------------------------------------------------------------

_GAMES = (
    "fortnite", "minecraft", "valorant", "roblox", "apex", "overwatch", "league", "rocket league",
    "among us", "warzone", "pubg", "genshin", "elden ring", "fall guys", "cs2", "rainbow six",
    "halo", "destiny", "brawl stars", "clash royale", "terraria", "gta online", "dota",
)  # fmt: skip
_CHARACTERS = (
    "mario", "luigi", "geralt", "link", "zelda", "kratos", "pikachu", "sonic", "master chief",
    "steve", "jett", "reyna", "sage", "tracer", "genji", "wraith", "bloodhound", "yasuo", "ahri",
    "peely", "jonesy", "kirby", "donkey kong", "aloy", "cloud", "sephiroth", "ezio", "doomguy",
)  # fmt: skip
_FAMOUS = (
    "lebron james", "taylor swift", "messi", "ronaldo", "ninja", "mrbeast", "elon musk", "drake",
    "billie eilish", "pewdiepie", "shroud", "keanu reeves", "beyonce", "michael jordan",
    "serena williams", "the rock", "snoop dogg", "ariana grande",
)  # fmt: skip
# Single-word stars only: a famous full name is still a full name to the S1 definition.
_STARS = (
    "messi", "ronaldo", "ninja", "mrbeast", "drake", "beyonce", "shroud", "pewdiepie", "neymar",
    "rihanna", "zendaya", "pele", "mbappe", "faker", "tenz",
)  # fmt: skip
_TEAMS = (
    "lakers", "warriors", "real madrid", "barcelona", "man united", "arsenal", "chiefs", "cowboys",
    "yankees", "celtics", "bayern", "liverpool", "psg", "t1", "fnatic", "sentinels", "cloud9",
)  # fmt: skip
_MAP_PLACES = (
    "pochinki", "tilted towers", "the north tower", "b site", "a long", "mid", "the docks",
    "school", "military base", "retail row", "the lighthouse", "the bridge", "spawn",
    "the nether portal", "the village", "the castle", "dust 2", "haven", "ascent",
    "the water tower", "kings canyon", "the east gate", "the old mill",
)  # fmt: skip
_FAMOUS_CITIES = (
    "paris", "tokyo", "new york", "london", "rome", "dubai", "berlin", "seoul", "sydney", "cairo",
    "rio", "venice", "los angeles", "hong kong", "barcelona", "istanbul",
)  # fmt: skip
_REAL_CITIES = (
    "chicago", "houston", "phoenix", "austin", "denver", "seattle", "toronto", "manchester",
    "leeds", "melbourne", "dallas", "miami", "atlanta", "boston", "glasgow", "portland",
)  # fmt: skip
_SERVERS = (
    "eu west", "na east", "na west", "oce", "asia", "eu nordic", "us central", "frankfurt",
    "singapore", "server 3", "the eu server",
)  # fmt: skip
_RANKS = (
    "iron", "bronze 2", "silver 3", "gold 1", "gold 4", "platinum", "plat 2", "diamond",
    "diamond 3", "ascendant", "immortal", "radiant", "master", "grandmaster", "champ 1", "predator",
)  # fmt: skip
_WEAPONS = (
    "ak", "sniper", "shotgun", "pump", "smg", "vandal", "phantom", "operator", "peacekeeper",
    "bow", "diamond sword", "katana", "grenade launcher", "deagle", "awp",
)  # fmt: skip
_ITEMS = (
    "golden skin", "legendary chest", "dragon egg", "netherite armor", "mythic scar", "rare emote",
    "elytra", "ender pearl", "health potion", "gold bars", "secret badge",
)  # fmt: skip
# WhatsApp is left out on purpose: its handle is a phone number, covered by phone templates.
_SOCIALS = (
    "snap", "snapchat", "insta", "instagram", "ig", "discord", "tiktok", "twitter", "telegram",
    "kik", "facebook", "fb",
)  # fmt: skip
_USER_ADJ = (
    "cool", "dark", "shadow", "silent", "crazy", "lil", "big", "toxic", "epic", "pro", "sneaky",
    "frosty", "lucky", "savage", "sleepy", "mega", "tiny", "golden",
)  # fmt: skip
_USER_NOUN = (
    "kid", "wolf", "gamer", "ninja", "sniper", "panda", "dragon", "fox", "queen", "king", "ghost",
    "slayer", "boi", "girl", "tiger", "noob", "cat", "bean",
)  # fmt: skip
_STREET_WORDS = (
    "oak", "maple", "pine", "elm", "cedar", "main", "park", "lake", "hill", "river", "church",
    "mill", "willow", "sunset", "highland",
)  # fmt: skip
_STREET_SUFFIX = ("st", "ave", "rd", "dr", "ln", "blvd", "ct", "way", "street", "avenue", "road")
_SCHOOL_KINDS = ("high school", "middle school", "high", "middle", "academy", "prep", "elementary")
_GRADES = ("6th", "7th", "8th", "9th", "10th", "11th", "12th")
_MONTHS = (
    "january", "february", "march", "april", "may", "june", "july", "august", "september",
    "october", "november", "december",
)  # fmt: skip
_PHONE_FORMATS = (
    "%##-%##-####", "(%##) %##-####", "%##.%##.####", "%#########", "+1 %## %## ####",
    "+1-%##-%##-####", "555-01##", "%##-####", "+44 7### ######", "07### ######",
    "+61 4## ### ###", "+49 15# #######",
)  # fmt: skip

Filler = Callable[[Faker, random.Random], str]
T = TypeVar("T")


def _username(fake: Faker, rng: random.Random) -> str:
    adj, noun, num = rng.choice(_USER_ADJ), rng.choice(_USER_NOUN), rng.randint(1, 999)
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


def _full_name(fake: Faker, rng: random.Random) -> str:
    first, last = fake.first_name(), fake.last_name()
    if rng.random() < 0.15:
        return f"{first} {rng.choice(string.ascii_uppercase)}. {last}"
    return f"{first} {last}"


def _email(fake: Faker, rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return str(fake.email())
    if style == 1:
        return str(fake.free_email())
    if style == 2:
        return f"{_username(fake, rng).replace('.', '_')}@{fake.free_email_domain()}".lower()
    local = f"{fake.first_name()}.{fake.last_name()}{rng.randint(1, 99)}"
    return f"{local}@{fake.free_email_domain()}".lower()


def _phone(fake: Faker, rng: random.Random) -> str:
    if rng.random() < 0.4:
        return str(fake.phone_number())
    return str(fake.numerify(rng.choice(_PHONE_FORMATS)))


def _street(fake: Faker, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return str(fake.street_address())
    word = rng.choice(_STREET_WORDS).title() if rng.random() < 0.5 else fake.last_name()
    return f"{rng.randint(1, 9999)} {word} {rng.choice(_STREET_SUFFIX)}"


def _city(fake: Faker, rng: random.Random) -> str:
    return rng.choice(_REAL_CITIES).title() if rng.random() < 0.4 else str(fake.city())


def _address(fake: Faker, rng: random.Random) -> str:
    street = _street(fake, rng)
    style = rng.randrange(3)
    if style == 0:
        return f"{street}, {fake.city()}, {fake.state_abbr()} {fake.zipcode()}"
    if style == 1:
        return f"{street}, {_city(fake, rng)}"
    return f"{street} {fake.city()} {fake.zipcode()}"


def _ip(fake: Faker, rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return str(fake.ipv4_public())
    if roll < 0.7:
        return str(fake.ipv4_private())
    return str(fake.ipv6())


def _card(fake: Faker, rng: random.Random) -> str:
    # Maestro's 12-digit numbers are left out: too short to read as a card in a chat message.
    kind = rng.choice(("visa16", "visa16", "mastercard", "mastercard", "amex", "discover", "jcb16"))
    digits = str(fake.credit_card_number(card_type=kind))
    sep = rng.choice(("", "", " ", "-"))
    if not sep:
        return digits
    return sep.join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _bday(fake: Faker, rng: random.Random) -> str:
    # Built from rng rather than Faker's date helpers, which depend on today's date.
    month, day, year = rng.randint(1, 12), rng.randint(1, 28), rng.randint(1988, 2015)
    style = rng.randrange(4)
    if style == 0:
        return f"{_MONTHS[month - 1]} {day}"
    if style == 1:
        return f"{month}/{day}/{year}"
    if style == 2:
        return f"{day} {_MONTHS[month - 1]} {year}"
    return f"{year}-{month:02d}-{day:02d}"


def _school(fake: Faker, rng: random.Random) -> str:
    base = fake.last_name() if rng.random() < 0.6 else str(fake.city())
    return f"{base} {rng.choice(_SCHOOL_KINDS)}"


def _version(fake: Faker, rng: random.Random) -> str:
    # At most three parts, so a version never looks like a dotted IPv4 address.
    major, minor, fix = rng.randint(1, 30), rng.randint(0, 20), rng.randint(0, 9)
    return rng.choice((f"{major}.{minor}", f"v{major}.{minor}.{fix}", f"{major}.{minor}.{fix}"))


def _build(fake: Faker, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.randint(2019, 2025)}.{rng.randint(1, 12)}.{rng.randint(1, 28)}"
    return f"b{rng.randint(1000, 99999)}"


def _order(fake: Faker, rng: random.Random) -> str:
    # Short enough not to read as a phone or card number.
    if rng.random() < 0.5:
        return f"#{rng.randint(10000, 999999)}"
    return f"{rng.choice(('ORD', 'A', 'INV'))}-{rng.randint(1000, 99999)}"


def _price(fake: Faker, rng: random.Random) -> str:
    style = rng.randrange(4)
    if style == 0:
        return f"${rng.randint(1, 99)}.{rng.choice((99, 49, 0)):02d}"
    if style == 1:
        return f"{rng.randint(2, 30) * 100:,} vbucks"
    if style == 2:
        return f"€{rng.randint(5, 80)}"
    return f"{rng.randint(100, 2000)} coins"


def _time(fake: Faker, rng: random.Random) -> str:
    style = rng.randrange(3)
    if style == 0:
        return f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45'))}"
    if style == 1:
        return f"{rng.randint(1, 12)}{rng.choice(('pm', 'am', ' pm'))}"
    return f"{rng.randint(0, 23):02d}:00"


def _score(fake: Faker, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.randint(0, 5)}-{rng.randint(0, 5)}"
    return f"{rng.randint(0, 30)}-{rng.randint(0, 30)}"


def _code(fake: Faker, rng: random.Random) -> str:
    chars = string.ascii_uppercase + string.digits
    left = "".join(rng.choice(chars) for _ in range(3))
    right = "".join(rng.choice(chars) for _ in range(3))
    return f"{left}-{right}"


def _promo(fake: Faker, rng: random.Random) -> str:
    return f"{rng.choice(('SAVE', 'GAMER', 'SUMMER', 'LOOT', 'GG'))}{rng.randint(5, 50)}"


def _coords(fake: Faker, rng: random.Random) -> str:
    x, y, z = rng.randint(-3000, 3000), rng.randint(0, 255), rng.randint(-3000, 3000)
    return f"{x}, {y}, {z}" if rng.random() < 0.5 else f"x {x} y {y} z {z}"


def _date(fake: Faker, rng: random.Random) -> str:
    month, day = _MONTHS[rng.randrange(12)], rng.randint(1, 28)
    return f"{month} {day}" if rng.random() < 0.6 else f"{day} {month}"


def _pick(options: tuple[str, ...]) -> Filler:
    return lambda fake, rng: rng.choice(options)


def _int(low: int, high: int) -> Filler:
    return lambda fake, rng: str(rng.randint(low, high))


_FILLERS: dict[str, Filler] = {
    # personal information
    "name": _full_name,
    "first": lambda fake, rng: str(fake.first_name()),
    "email": _email,
    "phone": _phone,
    "street": _street,
    "address": _address,
    "city": _city,
    "state": lambda fake, rng: str(fake.state_abbr() if rng.random() < 0.6 else fake.state()),
    "zip": lambda fake, rng: str(fake.zipcode()),
    "user": _username,
    "social": _pick(_SOCIALS),
    "age": lambda fake, rng: str(rng.randint(10, 19) if rng.random() < 0.8 else rng.randint(20, 35)),
    "grade": _pick(_GRADES),
    "school": _school,
    "bday": _bday,
    "ip": _ip,
    "card": _card,
    "exp": lambda fake, rng: f"{rng.randint(1, 12):02d}/{rng.randint(25, 32)}",
    "cvv": lambda fake, rng: f"{rng.randint(100, 999)}",
    # harmless look-alikes
    "game": _pick(_GAMES),
    "char": _pick(_CHARACTERS),
    "famous": _pick(_FAMOUS),
    "star": _pick(_STARS),
    "team": _pick(_TEAMS),
    "place": _pick(_MAP_PLACES),
    "famous_city": _pick(_FAMOUS_CITIES),
    "server": _pick(_SERVERS),
    "rank": _pick(_RANKS),
    "weapon": _pick(_WEAPONS),
    "item": _pick(_ITEMS),
    "score": _score,
    "lvl": _int(1, 150),
    "num": _int(2, 60),
    "small": _int(1, 9),
    "kd": lambda fake, rng: f"{rng.uniform(0.3, 4.0):.1f}",
    "time": _time,
    "price": _price,
    "version": _version,
    "build": _build,
    "order": _order,
    "bigscore": lambda fake, rng: f"{rng.randint(10_000, 9_999_999):,}",
    "code": _code,
    "promo": _promo,
    "temp": _int(-10, 40),
    "year": _int(1990, 2024),
    "ms": _int(8, 250),
    "pct": lambda fake, rng: f"{rng.randint(1, 99)}%",
    "coords": _coords,
    "date": _date,
    "itemid": _int(1000, 99999),
    "room": _int(100, 999),
}

# ---------------------------------------------------------------------------------------------
# Rendering and the style layer
# ---------------------------------------------------------------------------------------------


@dataclass
class _Piece:
    """A run of message text; ``value`` runs hold filled-in values that styling must not alter."""

    text: str
    value: bool = False


_FORMATTER = string.Formatter()
_WORD = re.compile(r"[A-Za-z']+")
_SLANG: dict[str, str] = {
    "you": "u",
    "your": "ur",
    "you're": "ur",
    "are": "r",
    "please": "pls",
    "okay": "ok",
    "because": "cuz",
    "thanks": "thx",
    "really": "rly",
    "what's": "whats",
    "tonight": "tonite",
    "brother": "bro",
}
_SLANG_PHRASES: dict[str, str] = {
    "going to": "gonna",
    "want to": "wanna",
    "got to": "gotta",
    "right now": "rn",
    "to be honest": "tbh",
    "i don't know": "idk",
}
_PREFIXES = ("lol ", "ngl ", "bro ", "yo ", "hey ", "ok ", "fr ", "omg ", "wait ", "tbh ")
_SUFFIXES = (" lol", " fr", " bro", "!!", " lmao", " ngl", " :)", " xd", " haha", " pls")
_EMOJI = ("😂", "🔥", "💀", "😭", "👀", "🙏", "😎", "👍", "❤️", "🤣", "😅")


def _field_root(field: str) -> str:
    # {char2} and {famous2} reuse the {char} / {famous} fillers for a second, independent value.
    return field.rstrip("0123456789")


def template_fields(template: str) -> list[str]:
    """Placeholder names in ``template`` with any numeric suffix removed (``char2`` -> ``char``)."""
    return [_field_root(f) for _, f, _, _ in _FORMATTER.parse(template) if f]


def _render(template: str, fake: Faker, rng: random.Random) -> list[_Piece]:
    pieces: list[_Piece] = []
    for literal, field, _spec, _conv in _FORMATTER.parse(template):
        if literal:
            pieces.append(_Piece(literal))
        if field:
            pieces.append(_Piece(_FILLERS[_field_root(field)](fake, rng), value=True))
    return pieces


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    return word[:i] + word[i] + word[i:]


def _style_literal(text: str, rng: random.Random, opts: dict[str, bool]) -> str:
    if opts["slang"]:
        for phrase, short in _SLANG_PHRASES.items():
            if rng.random() < 0.8:
                text = re.sub(rf"\b{phrase}\b", short, text, flags=re.IGNORECASE)
        text = _WORD.sub(
            lambda m: (
                _SLANG[m.group(0).lower()]
                if m.group(0).lower() in _SLANG and rng.random() < 0.75
                else m.group(0)
            ),
            text,
        )
    if opts["no_apostrophes"]:
        text = text.replace("'", "").replace("\u2019", "")
    if opts["no_punct"]:
        text = re.sub(r"[.,!?;:]", "", text)
    return text


def _style(pieces: list[_Piece], rng: random.Random) -> str:
    """Make a rendered message look typed in a hurry without touching any value piece."""
    opts = {
        "slang": rng.random() < 0.5,
        "no_apostrophes": rng.random() < 0.45,
        "no_punct": rng.random() < 0.25,
    }
    out = [p if p.value else _Piece(_style_literal(p.text, rng, opts), value=False) for p in pieces]
    if rng.random() < 0.15:
        # One typo per message at most, in a literal word long enough to still be readable.
        spots = [
            (i, m)
            for i, p in enumerate(out)
            if not p.value
            for m in _WORD.finditer(p.text)
            if len(m.group(0)) >= 4 and "'" not in m.group(0)
        ]
        if spots:
            i, m = rng.choice(spots)
            text = out[i].text
            out[i] = _Piece(text[: m.start()] + _typo(m.group(0), rng) + text[m.end() :])
    text = re.sub(r"\s+", " ", "".join(p.text for p in out))
    # Tidy spacing before decorating, so emoticon suffixes such as " :)" keep their space.
    text = re.sub(r" ([,.!?;:])", r"\1", text).strip()
    roll = rng.random()
    if roll < 0.45:
        text = text.lower()
    elif roll < 0.7:
        text = text[:1].upper() + text[1:]
    if rng.random() < 0.15:
        text = rng.choice(_PREFIXES) + text
    if rng.random() < 0.25:
        text = text.rstrip(".") + rng.choice(_SUFFIXES)
    if rng.random() < 0.15:
        emoji = rng.choice(_EMOJI) * rng.choice((1, 1, 2, 3))
        text = f"{text} {emoji}" if rng.random() < 0.8 else f"{emoji} {text}"
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def template_pools(task: str, split: Split = "train") -> dict[str, tuple[str, ...]]:
    """The raw template strings one split draws from, grouped by class.

    Args:
        task: one of :data:`SYNTH_TASKS`.
        split: ``train`` or ``check``; the two never share a template.

    Returns:
        For ``pii-intent``: ``none``, ``asking``, ``giving``. For ``pii-categories``: ``safe``,
        ``S1``..``S5`` (single-category clauses) and ``multi`` (frames with several categories).

    Raises:
        GuardtuneError: unknown task or split.
    """
    _check_task(task)
    _check_split(split)
    source = _INTENT_TEMPLATES if task == "pii-intent" else _CATEGORY_TEMPLATES
    return dict(source[split])


def generate(task: str, n: int, seed: int, split: Split = "train") -> pd.DataFrame:
    """Generate ``n`` synthetic chat messages with gold labels for a built-in PII task.

    Args:
        task: ``pii-intent`` (columns ``text,label``) or ``pii-categories`` (``text,labels``).
        n: number of rows, at least 1.
        seed: seeds both ``random.Random`` and Faker; the same arguments give the same frame.
        split: ``train`` or ``check``; ``check`` uses sentence frames ``train`` never uses.

    Returns:
        A DataFrame of exactly ``n`` rows. pii-intent is about 40% none / 30% asking / 30%
        giving; pii-categories about 35% safe / 40% one category / 25% two or more.

    Raises:
        GuardtuneError: unknown task or split, or ``n`` below 1.

    Example:
        >>> generate("pii-categories", n=3, seed=1).columns.tolist()
        ['text', 'labels']
    """
    _check_task(task)
    _check_split(split)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise GuardtuneError(f"n: expected a whole number of rows >= 1, found {n!r}")
    rng = random.Random(seed)
    fake = Faker()
    fake.seed_instance(seed)
    if task == "pii-intent":
        return _generate_intent(n, split, rng, fake)
    return _generate_categories(n, split, rng, fake)


def _check_task(task: str) -> None:
    if task not in SYNTH_TASKS:
        raise GuardtuneError(
            f"{task!r}: no synthetic generator for this task (known: {', '.join(SYNTH_TASKS)})"
        )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise GuardtuneError(f"split: expected one of {', '.join(SPLITS)}, found {split!r}")


def _quotas(n: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder counts per class, with every class present once ``n`` allows it."""
    exact = {k: n * s for k, s in shares.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True):
        if sum(counts.values()) >= n:
            break
        counts[k] += 1
    if n >= len(shares):
        for k in shares:
            if counts[k] == 0:
                donor = max(counts, key=lambda d: counts[d])
                counts[donor] -= 1
                counts[k] += 1
    return counts


def _dedup_key(text: str) -> str:
    # Case, punctuation and emoji alone do not make a new message worth training on.
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def _unique(make: Callable[[], tuple[str, T]], seen: set[str]) -> tuple[str, T]:
    text, extra = make()
    for _ in range(_MAX_RETRIES):
        if _dedup_key(text) not in seen:
            break
        text, extra = make()
    seen.add(_dedup_key(text))
    return text, extra


def _shuffled_plan(quotas: dict[str, int], rng: random.Random) -> list[str]:
    plan = [k for k, count in quotas.items() for _ in range(count)]
    rng.shuffle(plan)
    return plan


def _generate_intent(n: int, split: str, rng: random.Random, fake: Faker) -> pd.DataFrame:
    pools = _INTENT_TEMPLATES[split]
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    for label in _shuffled_plan(_quotas(n, INTENT_SHARES), rng):

        def make(label: str = label) -> tuple[str, None]:
            return _style(_render(rng.choice(pools[label]), fake, rng), rng), None

        text, _ = _unique(make, seen)
        rows.append({"text": text, "label": label})
    return pd.DataFrame(rows, columns=["text", "label"])


def _codes(templates: list[str]) -> str:
    found = {_FIELD_CATEGORY[f] for t in templates for f in template_fields(t) if f in _FIELD_CATEGORY}
    return ",".join(code for code in CATEGORY_CODES if code in found)


def _category_row(
    group: str, single: str, pools: dict[str, tuple[str, ...]], rng: random.Random, fake: Faker
) -> tuple[str, str]:
    if group == "safe":
        templates = [rng.choice(pools["safe"])]
    elif group == "one":
        templates = [rng.choice(pools[single])]
        # Harmless chatter around the PII keeps the model from keying on message length alone.
        if rng.random() < 0.25:
            context = rng.choice(pools["safe"])
            templates = [context, *templates] if rng.random() < 0.5 else [*templates, context]
    elif rng.random() < 0.4:
        templates = [rng.choice(pools["multi"])]
    else:
        k = rng.choices((2, 3, 4), weights=(0.75, 0.2, 0.05))[0]
        templates = [rng.choice(pools[code]) for code in rng.sample(CATEGORY_CODES, k)]
    pieces: list[_Piece] = []
    for i, template in enumerate(templates):
        if i:
            pieces.append(_Piece(rng.choice(_CONNECTORS)))
        pieces.extend(_render(template, fake, rng))
    return _style(pieces, rng), _codes(templates)


def _generate_categories(n: int, split: str, rng: random.Random, fake: Faker) -> pd.DataFrame:
    pools = _CATEGORY_TEMPLATES[split]
    plan = _shuffled_plan(_quotas(n, CATEGORY_GROUP_SHARES), rng)
    # Cycle through the categories so single-category rows stay balanced across S1..S5.
    singles: list[str] = []
    while len(singles) < plan.count("one"):
        singles.extend(rng.sample(CATEGORY_CODES, len(CATEGORY_CODES)))
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    single_iter = iter(singles)
    for group in plan:
        single = next(single_iter) if group == "one" else ""

        def make(group: str = group, single: str = single) -> tuple[str, str]:
            return _category_row(group, single, pools, rng, fake)

        text, codes = _unique(make, seen)
        rows.append({"text": text, "labels": codes})
    return pd.DataFrame(rows, columns=["text", "labels"])
