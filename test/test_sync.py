"""Stamp synchroniser: exact pairing, tolerance, losses, queue bounds."""

import pytest

from facediff_ros.core.sync import StampSynchronizer, SyncConfig

KEYS = ["color", "depth", "info"]
MS = 1_000_000


def test_exact_stamps_pair_in_any_arrival_order():
    sync = StampSynchronizer(KEYS)
    assert sync.add("depth", 100, "d100") == []
    assert sync.add("info", 100, "i100") == []
    assert sync.add("color", 100, "c100") == [{"color": "c100", "depth": "d100", "info": "i100"}]
    assert sync.add("color", 133, "c133") == []
    assert sync.add("info", 133, "i133") == []
    assert sync.add("depth", 133, "d133") == [{"color": "c133", "depth": "d133", "info": "i133"}]
    assert sync.matched == 2 and sum(sync.dropped.values()) == 0
    assert all(sync.pending(k) == 0 for k in KEYS)


def test_exact_match_is_preferred_over_a_nearer_in_tolerance_neighbour():
    sync = StampSynchronizer(["a", "b"], SyncConfig(tolerance_s=0.010))
    sync.add("b", 95 * MS, "b95")
    sync.add("b", 100 * MS, "b100")
    out = sync.add("a", 100 * MS, "a100")
    assert out == [{"a": "a100", "b": "b100"}]
    assert sync.dropped["unpaired_b"] == 1  # b95 was left behind by the match


def test_tolerance_pairs_nearest_and_zero_tolerance_does_not():
    loose = StampSynchronizer(["a", "b"], SyncConfig(tolerance_s=0.005))
    loose.add("b", 103 * MS, "b103")
    assert loose.add("a", 100 * MS, "a100") == [{"a": "a100", "b": "b103"}]
    strict = StampSynchronizer(["a", "b"])
    strict.add("b", 103 * MS, "b103")
    assert strict.add("a", 100 * MS, "a100") == []
    # b is already past 100 ms, so a100 can never be paired: dropped as unpaired.
    assert strict.dropped["unpaired_a"] == 1 and strict.pending("a") == 0


def test_lost_frames_are_counted_and_later_frames_still_pair():
    sync = StampSynchronizer(KEYS)
    # Frame 1's depth is lost; frame 2 arrives complete.
    sync.add("color", 1, "c1")
    sync.add("info", 1, "i1")
    sync.add("color", 2, "c2")
    sync.add("info", 2, "i2")
    out = sync.add("depth", 2, "d2")
    assert out == [{"color": "c2", "depth": "d2", "info": "i2"}]
    assert sync.dropped["unpaired_color"] == 1 and sync.dropped["unpaired_info"] == 1
    assert all(sync.pending(k) == 0 for k in KEYS)


def test_missing_stream_is_bounded_by_queue_size():
    sync = StampSynchronizer(KEYS, SyncConfig(queue_size=3))
    for s in range(10):
        sync.add("color", s, s)
        sync.add("depth", s, s)
    assert sync.pending("color") == 3 and sync.pending("depth") == 3
    assert sync.dropped["overflow_color"] == 7
    # Depth older than the oldest waiting colour frame can never pair: dropped before overflowing.
    assert sync.dropped["overflow_depth"] + sync.dropped["unpaired_depth"] == 7
    assert sync.matched == 0
    before = sync.dropped["unpaired_depth"]
    assert sync.add("info", 9, "i9") == [{"color": 9, "depth": 9, "info": "i9"}]
    # The two older colour/depth frames were left behind by the match.
    assert sync.dropped["unpaired_color"] == 2 and sync.dropped["unpaired_depth"] == before + 2
    assert all(sync.pending(k) == 0 for k in KEYS)


def test_bad_arguments():
    with pytest.raises(ValueError, match="keys"):
        StampSynchronizer(["a"])
    with pytest.raises(ValueError, match="keys"):
        StampSynchronizer(["a", "a"])
    with pytest.raises(ValueError, match="tolerance_s"):
        SyncConfig(tolerance_s=-1)
    with pytest.raises(ValueError, match="queue_size"):
        SyncConfig(queue_size=0)
    with pytest.raises(ValueError, match="key"):
        StampSynchronizer(KEYS).add("nope", 0, None)


def test_a_looping_recording_with_a_lost_message_recovers_at_once():
    """Stamps restart at 0; colour 29's depth was lost. The new pass must pair from its first frame."""
    from facediff_ros.core.sync import StampSynchronizer, SyncConfig
    sync = StampSynchronizer(["color", "depth"], SyncConfig(queue_size=5))
    matched = []
    for i in range(27, 30):
        matched += sync.add("color", i, f"c{i}")
        if i != 29:
            matched += sync.add("depth", i, f"d{i}")
    for i in range(0, 5):  # the recording looped: stamps go back to 0
        matched += sync.add("color", i, f"c{i}")
        matched += sync.add("depth", i, f"d{i}")
    assert [m["color"] for m in matched] == ["c27", "c28", "c0", "c1", "c2", "c3", "c4"]
    assert all(m["depth"] == "d" + m["color"][1:] for m in matched)
    assert sync.resets == 1


def test_reconfigure_counts_what_it_discards_and_keeps_earlier_counts():
    sync = StampSynchronizer(KEYS, SyncConfig(tolerance_s=0.0, queue_size=3))
    for stamp in (1, 2, 3, 4):
        sync.add("info", stamp, f"i{stamp}")  # the 4th overflows the queue of 3: i1 dropped
    sync.add("depth", 2, "d2")
    assert sync.add("color", 2, "c2") == [{"color": "c2", "depth": "d2", "info": "i2"}]
    assert sync.add("color", 3, "c3") == []  # waits for depth 3; i3 and i4 wait too
    assert dict(sync.dropped) == {"overflow_info": 1}
    assert [sync.pending(k) for k in KEYS] == [1, 0, 2]

    assert sync.reconfigure(SyncConfig(tolerance_s=0.005, queue_size=5)) == 3
    # Every queued message is counted by stream; the earlier counts and the match stay.
    assert dict(sync.dropped) == {"overflow_info": 1, "reset_color": 1, "reset_info": 2}
    assert sync.matched == 1 and all(sync.pending(k) == 0 for k in KEYS)
    # The new rules apply from now on: stamps 2 and 1 ms from the colour's pair within 5 ms.
    sync.add("depth", 500 * MS, "d500")
    sync.add("info", 503 * MS, "i503")
    assert sync.add("color", 502 * MS, "c502") == [{"color": "c502", "depth": "d500", "info": "i503"}]
    with pytest.raises(ValueError, match="config"):
        sync.reconfigure({"tolerance_s": 0.1})


# ---- report_unmatched: the colour frames given up on come back as partial sets -------------------
def test_default_drops_what_report_unmatched_hands_back():
    """Same input, both modes: without the flag the frame without a model is a counted drop; with it,
    the frame comes back with its depth (and no model), in stamp order before the next match."""
    def feed(sync):
        out = []
        for s in (1, 2):
            out += sync.add("color", s, f"c{s}")
            out += sync.add("depth", s, f"d{s}")
        out += sync.add("model", 2, "m2")  # frame 1 never gets a model
        return out

    plain = StampSynchronizer(["color", "depth", "model"])
    assert feed(plain) == [{"color": "c2", "depth": "d2", "model": "m2"}]
    assert plain.dropped["unpaired_color"] == 1 and plain.unmatched == 0
    reporting = StampSynchronizer(["color", "depth", "model"], report_unmatched=True)
    assert feed(reporting) == [{"color": "c1", "depth": "d1"}, {"color": "c2", "depth": "d2", "model": "m2"}]
    assert reporting.unmatched == 1 and sum(reporting.dropped.values()) == 0
    assert all(reporting.pending(k) == 0 for k in ("color", "depth", "model"))


@pytest.mark.parametrize("depth_first", [True, False])
def test_no_model_at_all_hands_every_frame_back_with_its_own_depth(depth_first):
    """The fitting chain is silent: each colour frame comes back once the queue is full, paired
    with the depth of its own stamp whichever stream arrives first (depth must not overflow first)."""
    sync = StampSynchronizer(["color", "depth", "model"], SyncConfig(queue_size=3), report_unmatched=True)
    out = []
    for s in range(10):
        order = ("depth", "color") if depth_first else ("color", "depth")
        for k in order:
            out += sync.add(k, s * MS, f"{k[0]}{s}")
    assert [m["color"] for m in out] == [f"c{s}" for s in range(len(out))]
    assert all(set(m) == {"color", "depth"} and m["depth"] == "d" + m["color"][1:] for m in out)
    assert len(out) >= 10 - 3 - 1  # at most queue_size (+1 being paired) still waiting
    assert sync.received["color"] == sync.matched + sync.unmatched + sync.pending("color")
    assert sync.dropped["unpaired_depth"] == 0 and sync.dropped["overflow_depth"] == 0


def test_backwards_time_hands_the_waiting_frames_back():
    sync = StampSynchronizer(["color", "model"], report_unmatched=True)
    sync.add("color", 50, "c50")
    sync.add("color", 51, "c51")
    out = sync.add("color", 3, "c3")  # the recording looped
    assert out == [{"color": "c50"}, {"color": "c51"}] and sync.resets == 1
    assert sync.add("model", 3, "m3") == [{"color": "c3", "model": "m3"}]


def test_every_colour_frame_is_matched_handed_back_or_waiting_exactly_once():
    """Random losses and arrival orders: no colour frame is lost or duplicated, a partial set's
    partners carry its stamp, a full set's too."""
    import random
    for seed in range(30):
        rng = random.Random(seed)
        sync = StampSynchronizer(["color", "depth", "model"], SyncConfig(queue_size=rng.randint(1, 6)),
                                 report_unmatched=True)
        out = []
        events = []
        for s in range(40):
            for k, lag in (("color", 0), ("depth", rng.choice([0, 0, 1])), ("model", rng.randint(0, 4))):
                if rng.random() < (0.3 if k == "model" else 0.05):
                    continue  # lost
                events.append((s + lag + rng.random() * 0.5, k, s))
        per_key = {}
        for _, k, s in sorted(events):
            per_key.setdefault(k, [])
            if per_key[k] and s < per_key[k][-1]:
                continue  # streams deliver in stamp order
            per_key[k].append(s)
            out += sync.add(k, s, f"{k[0]}{s}")
        colours = [m["color"] for m in out]
        assert len(colours) == len(set(colours)) == sync.matched + sync.unmatched
        assert len(colours) + sync.pending("color") == len(per_key["color"])
        assert all(m[k][1:] == m["color"][1:] for m in out for k in m)
        assert [int(c[1:]) for c in colours] == sorted(int(c[1:]) for c in colours)
