from benchmarks.round_cost import round_cost


def test_round_cost_runs_real_exchanges_over_grpc() -> None:
    # Both ends check every round's array (its index), so a reordered, lost or
    # corrupted message fails here rather than giving a number.
    for mode in ("bare", "channel"):
        s = round_cost(mode, rounds=50, elements=16)
        assert 0 < s < 5
