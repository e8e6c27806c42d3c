"""The guards on hand-written traps (must veto) and paraphrases (must pass).

The sentences are our own, written for these tests; none is taken from ../shared.
"""

from __future__ import annotations

import pytest

from stratacache.semantic import (
    EntityGuard,
    Guard,
    GuardVerdict,
    NumberGuard,
    PolarityGuard,
    ScopeGuard,
    SubstitutionGuard,
    default_guards,
    first_veto,
)

TRAPS: list[tuple[str, str, str]] = [
    # (guard expected to veto, query, cached text)
    ("numbers", "Where is parcel 77120?", "Where is parcel 77210?"),
    ("numbers", "Refund invoice INV-3391 please", "Refund invoice INV-3319 please"),
    ("numbers", "Set an alarm for 6am", "Set an alarm for 6pm"),
    ("numbers", "Is a deposit of $20 enough?", "Is a deposit of $200 enough?"),
    ("numbers", "Send 40 euros to Anna", "Send 40 dollars to Anna"),
    ("numbers", "Which trains leave on Friday?", "Which trains leave on Sunday?"),
    ("numbers", "Show me sales from last month", "Show me sales from this month"),
    ("numbers", "Reserve seats for three adults", "Reserve seats for five adults"),
    ("numbers", "What changed in release 4.2?", "What changed in release 4.12?"),
    ("numbers", "Is seat 12B free?", "Is seat 12C free?"),
    ("polarity", "Is this mushroom edible?", "Is this mushroom not edible?"),
    ("polarity", "Why does the printer connect?", "Why doesn't the printer connect?"),
    ("polarity", "Can my kid drink coffee?", "Can't my kid drink coffee?"),
    ("polarity", "Is the bridge safe to cross?", "Is the bridge unsafe to cross?"),
    ("polarity", "Is the pharmacy open at night?", "Is the pharmacy closed at night?"),
    ("polarity", "Which fruits can dogs eat?", "Which fruits should dogs avoid?"),
    ("polarity", "How do I encrypt a zip archive?", "How do I decrypt a zip archive?"),
    ("polarity", "Is fishing legal in this lake?", "Is fishing illegal in this lake?"),
    ("polarity", "How to mount a USB drive", "How to unmount a USB drive"),
    ("polarity", "Steps to upload a video", "Steps to download a video"),
    ("polarity", "Tea with milk: yes or no?", "Tea without milk: yes or no?"),
    ("entities", "How do I pay with Revolut?", "How do I pay with Monzo?"),
    ("entities", "Flights from Lisbon to Oslo", "Flights from Lisbon to Bergen"),
    ("entities", "What does the 'grep' tool do?", "What does the 'sed' tool do?"),
    ("entities", 'Define the term "latency"', 'Define the term "jitter"'),
    ("entities", "Is the Peugeot reliable?", "Is the Renault reliable?"),
    ("entities", "How do I set up a VPN on the router?", "How do I set up DNS on the router?"),
    ("scope", "Remove only the empty rows", "Remove the empty rows"),
    ("scope", "Backup before the upgrade", "Backup after the upgrade"),
    ("scope", "Which is the second tallest tower?", "Which is the third tallest tower?"),
    ("scope", "What is the minimum wage here?", "What is the maximum wage here?"),
    ("scope", "Delete all drafts", "Delete some drafts"),
    ("scope", "Which is the oldest bridge in town?", "Which is the longest bridge in town?"),
    ("scope", "Which route uses less fuel?", "Which route uses more fuel?"),
    ("substitution", "Dosage of paracetamol for adults", "Dosage of naproxen for adults"),
    ("substitution", "How do I clean a copper pan?", "How do I clean a ceramic pan?"),
    ("substitution", "Recipe for lemon cake with yogurt", "Recipe for carrot cake with yogurt"),
]

PARAPHRASES: list[tuple[str, str]] = [
    ("Where is parcel 77120?", "where's parcel #77120"),
    ("Set an alarm for 6am", "set an alarm for 6 am"),
    ("Reserve seats for three adults", "Reserve seats for 3 adults please"),
    ("Is a deposit of $20 enough?", "Is a 20 dollar deposit enough?"),
    ("How do I pay with Revolut?", "how can i pay using revolut"),
    ("What does the 'grep' tool do?", "What does the grep tool do?"),
    ("Is the pharmacy open at night?", "Is the pharmacy open at night??"),
    ("How do I change my profile photo?", "How can I update my profile picture?"),
    ("Any tips to fall asleep faster?", "What are some tips to fall asleep faster?"),
    ("Which plants need little water?", "Which plants need little water"),
    ("Explain recursion simply", "Please explain recursion simply"),
    ("Is it safe to swim after eating?", "Is swimming after eating safe?"),
    ("Why doesn't my laptop charge?", "Why won't my laptop charge?"),
    ("How tall is the Eiffel Tower?", "How high is the Eiffel Tower?"),
    ("Who composed the Moonlight Sonata?", "Who was the composer of the Moonlight Sonata?"),
    ("Summarize the meeting notes", "Summarise the meeting notes"),
    ("What is the best laptop for students?", "Which laptop is best for students?"),
    ("Can I pay by card at the museum?", "Is it possible to pay by card at the museum?"),
    ("How do I boil an egg?", "What's the way to boil an egg?"),
    ("When does the library close on Saturday?", "What time does the library close on Saturday?"),
]


@pytest.mark.parametrize(("guard", "query", "cached"), TRAPS)
def test_traps_are_vetoed_by_the_right_guard(guard: str, query: str, cached: str) -> None:
    verdict = first_veto(default_guards(), query, cached)
    assert verdict is not None, "a trap must be vetoed"
    by_name = {g.name: g for g in default_guards()}
    assert by_name[guard].check(query, cached) is not None, verdict
    # A veto is symmetric: the cached text would not serve the query either way round.
    assert first_veto(default_guards(), cached, query) is not None


@pytest.mark.parametrize(("query", "cached"), PARAPHRASES)
def test_paraphrases_pass_every_guard(query: str, cached: str) -> None:
    assert first_veto(default_guards(), query, cached) is None
    assert first_veto(default_guards(), cached, query) is None


@pytest.mark.parametrize("guard", default_guards(), ids=lambda g: g.name)
def test_identical_texts_always_pass(guard: Guard) -> None:
    for _, query, cached in TRAPS:
        assert guard.check(query, query) is None
        assert guard.check(cached, cached) is None


def test_guards_implement_the_protocol_and_have_distinct_names() -> None:
    guards = default_guards()
    assert all(isinstance(g, Guard) for g in guards)
    assert len({g.name for g in guards}) == len(guards)
    assert [g.name for g in guards] == [
        "numbers",
        "polarity",
        "entities",
        "scope",
        "substitution",
    ]


def test_verdicts_name_the_guard_and_say_what_differed() -> None:
    verdict = NumberGuard().check("Where is parcel 77120?", "Where is parcel 77210?")
    assert verdict == GuardVerdict("numbers", "numbers differ: 77120 vs 77210")
    verdict = PolarityGuard().check("Is the bridge safe?", "Is the bridge unsafe?")
    assert verdict is not None
    assert verdict.guard == "polarity"
    assert "unsafe" in verdict.reason
    verdict = EntityGuard().check("Pay with Revolut", "Pay with Monzo")
    assert verdict is not None
    assert "monzo" in verdict.reason
    assert "revolut" in verdict.reason


def test_number_normalisation() -> None:
    guard = NumberGuard()
    assert guard.check("Budget of 1,500 for the trip", "budget of 1500 for the trip") is None
    assert guard.check("Version 2.50", "version 2.5") is None
    assert guard.check("Room 007", "room 7") is None
    assert guard.check("Buy a dozen eggs", "Buy 12 eggs") is None
    assert guard.check("Two tickets", "2 tickets") is None
    assert guard.check("Two tickets", "2 tickets for tomorrow") is not None


def test_double_negation_keeps_polarity() -> None:
    guard = PolarityGuard()
    assert guard.check("Is it not uncommon?", "Is it not uncommon?") is None
    assert guard.check("Never say no", "Say yes") is not None
    assert guard.check("I never said no", "I never said no to it") is None


def test_substitution_spares_typos_and_word_forms() -> None:
    guard = SubstitutionGuard()
    assert guard.check("How to renew my pasport online", "How to renew my passport online") is None
    assert guard.check("Who painted the ceiling?", "Who was the painter of the ceiling?") is None
    # Too little in common to call it one sentence with a word swapped: other guards decide.
    assert guard.check("Cheap hotels", "Cheap hostels") is None
    assert SubstitutionGuard(min_shared=1).check("Cheap hotels", "Cheap motels") is not None


def test_scope_tolerates_one_sided_loose_words() -> None:
    guard = ScopeGuard()
    assert guard.check("Give me some ideas for dinner", "Ideas for dinner") is None
    assert (
        guard.check("What is the most popular pizza?", "Which pizza is liked by everyone?") is None
    )
    assert guard.check("The most popular pizza", "The least popular pizza") is not None
