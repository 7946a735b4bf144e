"""`metis simulate --seed`: the same seed gives the same figures, because the
caches' hash key (which keys share a bucket, a sketch counter, a shard)
comes from it; another seed or a random key may move them."""

from __future__ import annotations

from metis_shm.cli import main
from metis_shm.sim.simulator import hash_key, simulate


def _hits(seed: int | None) -> list[int]:
    """Hits of wtinylfu@252, wtinylfu@1000, lru@252, lru@1000."""
    result = simulate("lirs-gli", sizes=[252, 1000], policies=["wtinylfu", "lru"], seed=seed)
    rows = sorted(result.rows, key=lambda r: (r.policy != "wtinylfu", r.size))
    return [row.hits for row in rows]


def test_same_seed_same_figures() -> None:
    assert _hits(0) == _hits(0)
    assert _hits(7) == _hits(7)
    assert hash_key(0) == hash_key(0) != hash_key(1)


def test_seeds_move_wtinylfu_not_single_shard_lru() -> None:
    runs = {seed: _hits(seed) for seed in range(6)}
    lru = {tuple(h[2:]) for h in runs.values()}
    assert len(lru) == 1, "LRU on one shard does not depend on the hash"
    assert len({tuple(h[:2]) for h in runs.values()}) > 1, "W-TinyLFU's sketch follows the hash"


def test_cli_seed(capsys: object) -> None:
    argv = ["simulate", "lirs-gli", "--sizes", "252", "--policies", "wtinylfu", "-q"]
    assert main([*argv, "--seed", "3"]) == 0
    first = capsys.readouterr().out  # type: ignore[attr-defined]
    assert main([*argv, "--seed", "3"]) == 0
    assert capsys.readouterr().out.split("\n")[2].split()[:6] == first.split("\n")[2].split()[:6]  # type: ignore[attr-defined]
    assert main([*argv, "--seed", "random"]) == 0
    assert main([*argv, "--seed", "-1"]) == 2
