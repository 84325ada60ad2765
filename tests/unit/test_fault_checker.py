from tests.faults.checker import check


def test_a_perfect_history_is_valid() -> None:
    verdict = check([("h", "1"), ("h", "2")], [("h", "3")], [("h", "1"), ("h", "2")], [("h", "3")])
    assert verdict.valid and verdict.ok == 2


def test_the_checker_counts_each_kind_of_anomaly() -> None:
    verdict = check(
        expected=[("h", "1"), ("h", "2"), ("g", "1")],
        expected_dead=[("h", "9"), ("g", "9")],
        effects=[("h", "1"), ("h", "1"), ("h", "1"), ("g", "1"), ("h", "9")],
        dead=[("g", "9"), ("h", "2")],
    )
    assert (verdict.lost, verdict.duplicated, verdict.unexpected) == (1, 2, 1)
    assert (verdict.dead_missing, verdict.dead_unexpected) == (1, 1)
    assert not verdict.valid
    assert "lost 1, duplicated 2" in verdict.summary()
