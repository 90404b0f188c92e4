"""The reward-hacking alarm on synthetic step statistics (pure logic)."""

import logging

from openrlhf_coherent.alarm import HackingAlarm


def stats(reward, eos, logp):
    return {"coherent/reward_mean": reward, "coherent/eos_rate": eos, "coherent/sft_logp_per_token": logp}


def feed(alarm, rows):
    return [alarm.update(stats(*row))["coherent/hacking_alarm"] for row in rows]


def test_fires_when_reward_rises_as_eos_rate_falls(caplog):
    # the measured hack: reward 64 -> 160, EOS rate 0.99 -> 0.01
    rows = [(64 + 12 * i, 0.99 - 0.12 * i, -3.0) for i in range(9)]
    with caplog.at_level(logging.WARNING, logger="openrlhf_coherent"):
        fired = feed(HackingAlarm(window=5), rows)
    assert fired[:4] == [0.0] * 4 and fired[-1] == 1.0
    assert "REWARD-HACKING ALARM" in caplog.text and "--coherent.sft_logp_floor" in caplog.text


def test_fires_when_sft_likelihood_of_samples_falls_with_eos_intact():
    rows = [(10 + i, 0.99, -3.0 - 1.5 * i) for i in range(6)]
    assert feed(HackingAlarm(window=5), rows)[-1] == 1.0


def test_silent_when_reward_rises_and_behaviour_stays_like_sft():
    rows = [(10 + i, 0.97 + 0.005 * (i % 2), -3.0 + 0.05 * i) for i in range(12)]
    assert not any(feed(HackingAlarm(window=5), rows))


def test_silent_when_reward_falls_even_if_eos_rate_falls():
    rows = [(10 - i, 0.99 - 0.1 * i, -3.0) for i in range(8)]
    assert not any(feed(HackingAlarm(window=5), rows))


def test_counts_firing_steps():
    alarm = HackingAlarm(window=3)
    for i in range(6):
        out = alarm.update(stats(10 + 5 * i, 1.0 - 0.2 * i, -2.0))
    assert out["coherent/hacking_alarm_steps"] == 4.0  # steps 3..6 (index 2..5)


def test_state_round_trip_continues_like_an_uninterrupted_run():
    """What a resumed PPO run restores from its checkpoint (trainer.coherent_state)."""
    import json

    rows = [(64 + 12 * i, 0.99 - 0.12 * i, -3.0) for i in range(9)]
    straight = HackingAlarm(window=5)
    expected = [straight.update(stats(*row)) for row in rows]
    before = HackingAlarm(window=5)
    feed(before, rows[:3])
    resumed = HackingAlarm(window=5)
    resumed.load_state_dict(json.loads(json.dumps(before.state_dict())))  # plain data only
    assert [resumed.update(stats(*row)) for row in rows[3:]] == expected[3:]
    assert expected[-1]["coherent/hacking_alarm"] == 1.0
