"""shard_meta_for_dp: NeMo-RL's worked vectors (reference §7.7), balanced modes, and bad arguments."""

from __future__ import annotations

import copy
import itertools
import json
import math

import pytest

import kvplane
from kvplane import DataPlaneBadRequest, KVBatchMeta, shard_meta_for_dp

LENGTHS = [1204, 499, 1445, 876, 361, 487, 927, 678]
MFFD = "modified_first_fit_decreasing"


def make_meta(lengths=LENGTHS, *, tags=None, extra_info=None) -> KVBatchMeta:
    return KVBatchMeta(
        "train",
        "actor_train",
        [f"k{i}" for i in range(len(lengths))],
        fields=["input_ids", "input_lengths"],
        sequence_lengths=list(lengths),
        extra_info=dict(extra_info or {}),
        tags=tags,
    )


def rank_rows(metas: list[KVBatchMeta]) -> list[list[int]]:
    return [[int(sid[1:]) for sid in m.sample_ids] for m in metas]


def packing(cap: int, pad: int = 1, algorithm: str = MFFD, **extra) -> dict:
    return {
        "algorithm": algorithm,
        "max_tokens_per_microbatch": cap,
        "sequence_length_pad_multiple": pad,
        "input_key": "input_ids",
        "input_lengths_key": "input_lengths",
        **extra,
    }


def dynamic(max_tokens: int, round_to: int) -> dict:
    return {
        "max_tokens_per_microbatch": max_tokens,
        "sequence_length_round": round_to,
        "input_key": "input_ids",
        "input_lengths_key": "input_lengths",
    }


def plan(mbi, mbl, ecg=None) -> dict:
    out = {"micro_batch_indices": mbi, "micro_batch_lengths": mbl}
    if ecg is not None:
        out["elem_counts_per_gb"] = ecg
    return out


# Reference §7.7, forward-permutation column; extra_info is the whole expected dict per rank.
VECTORS = [
    pytest.param(dict(dp_world=4), [[0, 1], [2, 3], [4, 5], [6, 7]], [{}] * 4, id="contiguous-dp4"),
    pytest.param(
        dict(dp_world=2, batch_size=4), [[0, 1, 4, 5], [2, 3, 6, 7]], [{}] * 2, id="contiguous-dp2-B4"
    ),
    pytest.param(
        dict(dp_world=4, sequence_packing_args=packing(2048)),
        [[2, 1], [0, 7], [5, 4], [6, 3]],
        [plan([[[0, 2]]], [[s]], [2]) for s in (1944, 1882, 848, 1803)],
        id="mffd-2048-dp4",
    ),
    pytest.param(
        dict(dp_world=2, sequence_packing_args=packing(4096)),
        [[3, 7, 1, 5, 4], [2, 0, 6]],
        [plan([[[0, 5]]], [[2901]], [5]), plan([[[0, 3]]], [[3576]], [3])],
        id="mffd-4096-dp2-uneven",
    ),
    pytest.param(
        dict(dp_world=2, batch_size=4, sequence_packing_args=packing(2048, pad=64)),
        [[2, 3, 5, 4], [0, 1, 6, 7]],
        [
            plan([[[0, 1], [1, 2]], [[0, 2]]], [[1472, 896], [896]], [2, 2]),
            plan([[[0, 1], [1, 2]], [[0, 2]]], [[1216, 512], [1664]], [2, 2]),
        ],
        id="mffd-2048-pad64-dp2-B4",
    ),
    pytest.param(
        dict(dp_world=2, dynamic_batching_args=dynamic(4096, 64)),
        [[4, 1, 3, 0], [5, 7, 6, 2]],
        [plan([[[0, 3], [3, 4]]], [[960, 1472]])] * 2,
        id="dynbatch-4096-dp2",
    ),
    pytest.param(
        dict(dp_world=2, batch_size=4, dynamic_batching_args=dynamic(2048, 64)),
        [[1, 0, 4, 7], [3, 2, 5, 6]],
        [plan([[[0, 1], [1, 2]], [[0, 2]]], [[896, 1472], [960]])] * 2,
        id="dynbatch-2048-dp2-B4",
    ),
]


@pytest.mark.parametrize(("kwargs", "expected_rows", "expected_extra"), VECTORS)
def test_nemo_rl_worked_vectors(kwargs, expected_rows, expected_extra):
    metas, perm = shard_meta_for_dp(make_meta(extra_info={"pad_to_multiple": 8}), **kwargs)
    assert rank_rows(metas) == expected_rows
    flat = [i for rows in expected_rows for i in rows]
    assert perm == (None if flat == list(range(len(flat))) else flat)
    for meta, extra in zip(metas, expected_extra, strict=True):
        assert meta.extra_info == {"pad_to_multiple": 8, **extra}
        # Byte-compatible: plain lists of plain ints, identical once serialised.
        assert json.dumps(meta.extra_info) == json.dumps({"pad_to_multiple": 8, **extra})


def test_bin_count_adjustment_splits_the_big_bin():
    metas, perm = shard_meta_for_dp(
        make_meta(list(range(10, 18))), dp_world=4, batch_size=8, sequence_packing_args=packing(100)
    )
    assert rank_rows(metas) == [[0], [7, 6, 5, 4, 3], [1], [2]]
    assert [m.extra_info["micro_batch_lengths"] for m in metas] == [[[10]], [[75]], [[11]], [[12]]]
    assert perm == [0, 7, 6, 5, 4, 3, 1, 2]


def test_identity_permutation_is_none_as_in_nemo_rl():
    # NeMo-RL's contiguous mode never moves a row, and NeMo-RL reports that as None.
    _, perm = shard_meta_for_dp(make_meta(), dp_world=4)
    assert perm is None
    # Any mode that leaves rows in place says so the same way; one that moves them returns a list.
    _, kept = shard_meta_for_dp(make_meta(), dp_world=1, balance="tokens")
    assert kept is None
    _, moved = shard_meta_for_dp(make_meta(), dp_world=2, balance="tokens")
    assert isinstance(moved, list) and moved != list(range(8))


def test_forward_permutation_restores_input_order_by_scatter():
    metas, perm = shard_meta_for_dp(make_meta(), dp_world=2, sequence_packing_args=packing(4096))
    aggregated = [sid for m in metas for sid in m.sample_ids]
    restored = [None] * len(aggregated)
    for j, original in enumerate(perm):
        restored[original] = aggregated[j]
    assert restored == make_meta().sample_ids


def test_tags_travel_with_rows_and_the_input_meta_is_untouched():
    meta = make_meta(
        tags=[{"group_id": f"g{i // 2}", "seq_len": n} for i, n in enumerate(LENGTHS)],
        extra_info={"micro_batch_indices": "stale", "step": 3},
    )
    before = copy.deepcopy(meta)
    metas, _ = shard_meta_for_dp(meta, dp_world=2, dynamic_batching_args=dynamic(4096, 64))
    assert meta == before
    for m in metas:
        assert [t["seq_len"] for t in m.tags] == m.sequence_lengths
        assert m.extra_info["step"] == 3
        assert m.extra_info["micro_batch_indices"] != "stale"
    metas, _ = shard_meta_for_dp(meta, dp_world=2)
    assert all("micro_batch_indices" not in m.extra_info for m in metas), "stale plan keys are dropped"


def test_largest_first_orders_each_ranks_bins_by_token_sum():
    metas, _ = shard_meta_for_dp(
        make_meta(),
        dp_world=2,
        batch_size=4,
        sequence_packing_args=packing(2048, pad=64, microbatch_order="largest_first"),
    )
    for m in metas:
        for sizes in m.extra_info["micro_batch_lengths"]:
            assert sizes == sorted(sizes, reverse=True)
    assert metas[1].extra_info["micro_batch_lengths"] == [[1216, 512], [1664]]


def test_first_fit_shuffle_is_deterministic_per_seed():
    lengths = [(i * 37) % 500 + 1 for i in range(64)]
    args = packing(1024, algorithm="first_fit_shuffle", seed=7)
    first = shard_meta_for_dp(make_meta(lengths), dp_world=4, sequence_packing_args=args)
    again = shard_meta_for_dp(make_meta(lengths), dp_world=4, sequence_packing_args=dict(args))
    assert first[1] == again[1]
    others = {
        tuple(shard_meta_for_dp(make_meta(lengths), dp_world=4, sequence_packing_args={**args, "seed": s})[1])
        for s in range(5)
    }
    assert len(others) > 1, "the seed changes the shuffle"


def test_algorithm_names_are_case_insensitive():
    lower = shard_meta_for_dp(make_meta(), dp_world=4, sequence_packing_args=packing(2048))
    upper = shard_meta_for_dp(
        make_meta(), dp_world=4, sequence_packing_args=packing(2048, algorithm=MFFD.upper())
    )
    assert lower[1] == upper[1]


def test_dynamic_batching_gives_an_oversized_sample_its_own_micro_batch():
    metas, _ = shard_meta_for_dp(
        make_meta([100, 5000, 120, 130]), dp_world=2, dynamic_batching_args=dynamic(1024, 64)
    )
    # sorted: 100, 120, 130, 5000 -> rank0 [100, 130], rank1 [120, 5000]; position 1 is 5056 > 1024.
    assert metas[0].extra_info == plan([[[0, 1], [1, 2]]], [[128, 5056]])


def test_kvplane_reexports_shard_meta_for_dp():
    assert kvplane.shard_meta_for_dp is shard_meta_for_dp


# --- balanced modes ------------------------------------------------------------------------------


def brute_force_peak(weights: list[float], k: int = 2) -> float:
    return min(
        max(sum(w for w, r in zip(weights, ranks, strict=True) if r == rank) for rank in range(k))
        for ranks in itertools.product(range(k), repeat=len(weights))
    )


def test_balanced_tokens_finds_the_optimum_on_the_worked_vector():
    metas, perm = shard_meta_for_dp(make_meta(), dp_world=2, balance="tokens")
    assert max(sum(m.sequence_lengths) for m in metas) == brute_force_peak(LENGTHS) == 3245
    assert sorted(perm) == list(range(8))
    for m in metas:
        assert m.extra_info == plan([[[0, m.size]]], [[sum(m.sequence_lengths)]], [m.size])


def test_flops_balances_a_l_plus_l_squared_not_tokens():
    lengths = [1472, 1584, 2289, 2856, 201, 518]
    meta = make_meta(lengths)
    by_tokens, _ = shard_meta_for_dp(meta, dp_world=2, balance="tokens")
    by_flops, _ = shard_meta_for_dp(meta, dp_world=2, balance="flops", flops_coeff=0)
    assert max(sum(m.sequence_lengths) for m in by_tokens) == brute_force_peak(lengths)
    squares = [n * n for n in lengths]
    assert max(sum(n * n for n in m.sequence_lengths) for m in by_flops) == brute_force_peak(squares)
    assert {frozenset(m.sample_ids) for m in by_tokens} != {frozenset(m.sample_ids) for m in by_flops}
    # The default coefficient (6 x 4096) weighs the linear term heavily: close to token balance.
    default, _ = shard_meta_for_dp(meta, dp_world=2, balance="flops")
    assert {frozenset(m.sample_ids) for m in default} == {frozenset(m.sample_ids) for m in by_tokens}


def test_equal_count_keeps_sample_counts_equal():
    lengths = [8000, 100, 120, 90, 110, 130, 95, 105]
    free, _ = shard_meta_for_dp(make_meta(lengths), dp_world=2, balance="tokens")
    equal, _ = shard_meta_for_dp(make_meta(lengths), dp_world=2, balance="tokens", equal_count=True)
    assert sorted(m.size for m in free) == [1, 7]
    assert [m.size for m in equal] == [4, 4]


def test_group_tag_keeps_each_group_on_one_rank():
    lengths = [900, 100, 800, 200, 700, 300, 600, 400, 500, 500, 450, 550]
    tags = [{"group_id": f"g{i % 4}"} for i in range(12)]  # groups interleaved, three rows each
    metas, perm = shard_meta_for_dp(
        make_meta(lengths, tags=tags), dp_world=2, balance="tokens", group_tag="group_id"
    )
    homes = {}
    for rank, m in enumerate(metas):
        for tag in m.tags:
            assert homes.setdefault(tag["group_id"], rank) == rank
    assert len(homes) == 4 and sorted(perm) == list(range(12))
    group_loads = [
        sum(n for n, t in zip(lengths, tags, strict=True) if t["group_id"] == group)
        for group in ("g0", "g1", "g2", "g3")
    ]
    assert max(sum(m.sequence_lengths) for m in metas) == brute_force_peak(group_loads)


def test_balanced_dynamic_batching_is_equal_count_with_a_shared_plan():
    metas, _ = shard_meta_for_dp(
        make_meta(), dp_world=2, balance="tokens", dynamic_batching_args=dynamic(4096, 64)
    )
    assert [m.size for m in metas] == [4, 4]
    assert metas[0].extra_info == metas[1].extra_info
    for m in metas:
        assert m.sequence_lengths == sorted(m.sequence_lengths)
    nemo, _ = shard_meta_for_dp(make_meta(), dp_world=2, dynamic_batching_args=dynamic(4096, 64))
    assert max(sum(m.sequence_lengths) for m in metas) <= max(sum(m.sequence_lengths) for m in nemo)


def test_balanced_packing_is_lighter_than_nemo_packing_with_equal_micro_batch_counts():
    metas, _ = shard_meta_for_dp(
        make_meta(), dp_world=2, balance="tokens", sequence_packing_args=packing(2048)
    )
    nemo, _ = shard_meta_for_dp(make_meta(), dp_world=2, sequence_packing_args=packing(2048))
    assert len({len(m.extra_info["micro_batch_indices"][0]) for m in metas}) == 1
    assert max(sum(m.sequence_lengths) for m in metas) < max(sum(m.sequence_lengths) for m in nemo)
    for m in metas:
        assert all(size <= 2048 for size in m.extra_info["micro_batch_lengths"][0])


# --- bad arguments -------------------------------------------------------------------------------


def _no_lengths():
    meta = make_meta()
    meta.sequence_lengths = None
    return meta


def _short_lengths():
    meta = make_meta()
    meta.sequence_lengths = [1, 2]
    return meta


TAGGED = make_meta(tags=[{"group_id": i // 2} for i in range(8)])


def grouped(tags: list[dict], **overrides) -> dict:
    """Arguments of a balanced whole-group split of the worked vector with these tags."""
    return {
        "meta": make_meta(tags=tags),
        "dp_world": 2,
        "balance": "tokens",
        "group_tag": "group_id",
        **overrides,
    }


BAD = [
    pytest.param(lambda: {"meta": "not a meta", "dp_world": 2}, "KVBatchMeta", id="meta-type"),
    pytest.param(lambda: {"dp_world": 0}, "dp_world", id="dp-zero"),
    pytest.param(lambda: {"dp_world": -2}, "dp_world", id="dp-negative"),
    pytest.param(lambda: {"dp_world": 2.0}, "dp_world", id="dp-float"),
    pytest.param(lambda: {"dp_world": True}, "dp_world", id="dp-bool"),
    pytest.param(lambda: {"meta": make_meta([]), "dp_world": 1}, "empty", id="empty-meta"),
    pytest.param(lambda: {"meta": _no_lengths(), "dp_world": 2}, "sequence_lengths", id="no-lengths"),
    pytest.param(lambda: {"meta": _short_lengths(), "dp_world": 2}, "sequence_lengths", id="short-lengths"),
    pytest.param(lambda: {"meta": make_meta([1.5] * 8), "dp_world": 2}, "integers", id="float-lengths"),
    pytest.param(
        lambda: {"meta": make_meta([-1] + LENGTHS[1:]), "dp_world": 2}, ">= 0", id="negative-length"
    ),
    pytest.param(
        lambda: {
            "dp_world": 2,
            "sequence_packing_args": packing(4096),
            "dynamic_batching_args": dynamic(4096, 1),
        },
        "at most one",
        id="both-packings",
    ),
    pytest.param(lambda: {"dp_world": 2, "batch_size": 3}, "batch_size", id="batch-not-dividing-n"),
    pytest.param(
        lambda: {"dp_world": 4, "batch_size": 2}, "multiple of dp_world", id="batch-not-multiple-of-dp"
    ),
    pytest.param(lambda: {"dp_world": 3}, "multiple of dp_world", id="n-not-multiple-of-dp"),
    pytest.param(lambda: {"dp_world": 2, "batch_size": 0}, "batch_size", id="batch-zero"),
    pytest.param(lambda: {"dp_world": 2, "balance": "speed"}, "balance", id="balance-unknown"),
    pytest.param(
        lambda: {"dp_world": 2, "balance": "tokens", "equal_count": 1}, "equal_count", id="equal-count-type"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "equal_count": True}, "balanced mode", id="equal-count-without-balance"
    ),
    pytest.param(
        lambda: {"meta": TAGGED, "dp_world": 2, "group_tag": "group_id"},
        "balanced mode",
        id="group-no-balance",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "balance": "tokens", "flops_coeff": 1.0}, "flops_coeff", id="coeff-for-tokens"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "balance": "flops", "flops_coeff": -1}, "flops_coeff", id="coeff-negative"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "balance": "flops", "flops_coeff": math.nan}, "flops_coeff", id="coeff-nan"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": [("algorithm", MFFD)]}, "dict", id="packing-type"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": packing(4096, algoritm=1)},
        "unknown keys",
        id="packing-typo",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": {"max_tokens_per_microbatch": 4096}},
        "algorithm",
        id="no-algorithm",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": packing(4096, algorithm="best_fit")},
        "algorithm",
        id="bad-algorithm",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": {"algorithm": MFFD}}, "max_tokens", id="no-cap"
    ),
    pytest.param(lambda: {"dp_world": 2, "sequence_packing_args": packing(0)}, "max_tokens", id="cap-zero"),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": packing(4096, pad=0)}, "pad_multiple", id="pad-zero"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": packing(4096, microbatch_order="random")},
        "microbatch_order",
        id="bad-order",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": packing(4096, seed="x")}, "seed", id="bad-seed"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": packing(1400)}, "exceeds bin capacity", id="too-long"
    ),
    pytest.param(
        lambda: {"dp_world": 2, "sequence_packing_args": packing(1445, pad=64)},
        "exceeds bin capacity",
        id="too-long-padded",
    ),
    pytest.param(
        lambda: {"meta": make_meta([0] + LENGTHS[1:]), "dp_world": 2, "sequence_packing_args": packing(4096)},
        ">= 1",
        id="mffd-zero-length",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "balance": "tokens", "sequence_packing_args": packing(1000)},
        "exceeds bin capacity",
        id="too-long-balanced",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "dynamic_batching_args": {"max_tokens": 4096}}, "unknown keys", id="dyn-typo"
    ),
    pytest.param(lambda: {"dp_world": 2, "dynamic_batching_args": {}}, "max_tokens", id="dyn-no-cap"),
    pytest.param(
        lambda: {"dp_world": 2, "dynamic_batching_args": dynamic(4096, 0)},
        "sequence_length_round",
        id="dyn-round-zero",
    ),
    pytest.param(
        lambda: {"dp_world": 2, "balance": "tokens", "group_tag": "group_id"}, "tags", id="group-without-tags"
    ),
    pytest.param(
        lambda: {"meta": TAGGED, "dp_world": 2, "balance": "tokens", "group_tag": ""},
        "group_tag",
        id="group-empty",
    ),
    pytest.param(
        lambda: grouped([{"group_id": 0}] * 7 + [{}]), "has no 'group_id'", id="group-missing-on-a-row"
    ),
    pytest.param(lambda: grouped([{"group_id": [i]} for i in range(8)]), "unhashable", id="group-unhashable"),
    pytest.param(
        lambda: grouped([{"group_id": i // 3} for i in range(8)], batch_size=4),
        "spans more than one batch",
        id="group-spans-batches",
    ),
    pytest.param(
        lambda: grouped([{"group_id": i // 4} for i in range(8)], dp_world=4),
        "at least one whole group",
        id="fewer-groups-than-ranks",
    ),
    pytest.param(
        lambda: grouped([{"group_id": min(i // 3, 2)} for i in range(8)], equal_count=True),
        "equal-size groups",
        id="equal-count-unequal-groups",
    ),
]


@pytest.mark.parametrize(("build", "message"), BAD)
def test_bad_arguments_raise_bad_request(build, message):
    kwargs = build()
    meta = kwargs.pop("meta") if "meta" in kwargs else make_meta()
    before = copy.deepcopy(meta) if isinstance(meta, KVBatchMeta) else meta
    with pytest.raises(DataPlaneBadRequest, match=message) as info:
        shard_meta_for_dp(meta, **kwargs)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, AssertionError)
    assert meta == before, "a rejected call changes nothing"


def test_whole_groups_that_cannot_share_micro_batches_evenly_are_rejected():
    # Groups of 3, 3, 3, 2, 2, 2 rows over 5 ranks, one row per micro-batch: equal micro-batch counts
    # per rank would need 3 rows on every rank, which whole groups cannot give.
    labels = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2]
    meta = KVBatchMeta(
        "train", "t", [f"s{i}" for i in range(15)], fields=["x"], sequence_lengths=[1] * 15,
        tags=[{"group_id": f"g{g}"} for g in labels],
    )
    packing = {"algorithm": "concatenative", "max_tokens_per_microbatch": 1, "sequence_length_pad_multiple": 1}
    with pytest.raises(DataPlaneBadRequest, match="same number of packed micro-batches"):
        shard_meta_for_dp(meta, dp_world=5, balance="tokens", group_tag="group_id", sequence_packing_args=packing)
