"""The demo's ``first_source`` task: labels follow from the shot plan, classes are balanced in
every split, and nothing order-free (a mean over time of per-shot tokens) predicts it.

Everything runs on plans (:func:`catalogs.demo_plan.plan_demo`), which need no rendering.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict

import polars as pl

from catalogs.demo import CLASSES, TASKS, plan_demo, plan_tables
from catalogs.demo_plan import VideoPlan


def _source_counts(plan: VideoPlan) -> tuple[int, ...]:
    """Shots per source in CLASSES order: a mean over time of one-hot source tokens, times the
    number of shots (so more than the mean itself knows)."""
    counts = Counter(shot.source for shot in plan.shots)
    return tuple(counts[c] for c in CLASSES)


def test_first_source_is_the_first_shots_source():
    assert TASKS["first_source"].kind == "classification"
    assert TASKS["first_source"].classes == CLASSES
    for variant in ("default", "small"):
        plans = plan_demo(variant=variant)
        labels = plan_tables(plans)["labels"]
        assert labels["first_source"].to_list() == [p.shots[0].source for p in plans]


def test_first_source_is_balanced_in_every_split():
    tables = plan_tables(plan_demo(variant="default"))
    table = tables["labels"].join(tables["videos"], on="video_id")
    overall = table["first_source"].value_counts()
    assert overall.height == len(CLASSES) and overall["count"].min() >= 30  # 96 videos
    for split, group in table.group_by("split"):
        shares = group["first_source"].value_counts()["count"] / group.height
        assert len(shares) == len(CLASSES) and (abs(shares - 1 / 3) <= 0.1).all(), split
    # Not the dominant source in disguise, and never a one-source video (order says nothing).
    same = (table["first_source"] == table["most_screen_time"]).mean()
    assert 0.3 <= same <= 0.5
    assert table["sources_present"].list.len().min() == 2


def test_reordering_the_shots_changes_only_first_source():
    plan = plan_demo(variant="default")[0]
    shots = list(plan.shots)
    other = next(k for k, shot in enumerate(shots) if shot.source != shots[0].source)
    shots[0], shots[other] = shots[other], shots[0]  # same multiset of shots, other order
    swapped = dataclasses.replace(plan, shots=tuple(shots))
    before, after = (plan_tables([p])["labels"] for p in (plan, swapped))
    assert before["first_source"][0] != after["first_source"][0]
    order_free = pl.exclude("first_source")
    assert before.select(order_free).equals(after.select(order_free))


def test_shot_counts_do_not_predict_first_source():
    """The best guess from shots per source (fit on 40 seeds, scored on 10 others) is at
    chance: 1 / (sources present), 0.40 on average; reading the first shot gets 1.0."""
    fit = [p for seed in range(1, 41) for p in plan_demo(variant="default", seed=1000 * seed)]
    held_out = [p for seed in range(41, 51) for p in plan_demo(variant="default", seed=1000 * seed)]
    seen: dict[tuple[int, ...], Counter] = defaultdict(Counter)
    for plan in fit:
        seen[_source_counts(plan)][plan.shots[0].source] += 1

    def guess(plan: VideoPlan) -> str:
        counts = _source_counts(plan)
        if counts in seen:
            return seen[counts].most_common(1)[0][0]
        return CLASSES[max(range(len(CLASSES)), key=counts.__getitem__)]

    accuracy = sum(guess(p) == p.shots[0].source for p in held_out) / len(held_out)
    chance = sum(1 / sum(c > 0 for c in _source_counts(p)) for p in held_out) / len(held_out)
    assert abs(chance - 0.4) < 0.03
    assert accuracy < chance + 0.05, (accuracy, chance)
