import json

import pytest

from memlong import MemLongConfig, MemLongConfigError


def test_paper_defaults_and_numbering():
    c = MemLongConfig()
    assert c.memory_layer == 13 and c.retrieval_layers == (14, 18, 22, 26)
    assert c.memory_layer_index == 12 and c.retrieval_layer_indices == (13, 17, 21, 25)
    assert MemLongConfig.for_num_layers(26).retrieval_layers == (14, 18, 22, 26)
    assert MemLongConfig.for_num_layers(26).memory_layer == 13


def test_json_round_trip(tmp_path):
    c = MemLongConfig(
        memory_layer=2,
        retrieval_layers=[3, 4],
        chunk_size=8,
        top_k=2,
        memory_capacity=64,
        local_window=32,
        eviction="fifo",
        fusion="joint",
        retrieval_offsets=[0, 1],
        question_offsets=[0, 1],
        question_order="score",
        question_reread=True,
        question_window=True,
        question_tail=4,
    )
    c.save_pretrained(tmp_path)
    assert MemLongConfig.from_pretrained(tmp_path) == c
    json.loads(c.to_json_string())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(memory_layer=4, retrieval_layers=(4, 6)), "retrieval_layers"),
        (dict(memory_layer=4, retrieval_layers=(2,)), "retrieval_layers"),
        (dict(retrieval_layers=()), "retrieval_layers"),
        (dict(chunk_size=256, local_window=128), "chunk_size"),
        (dict(chunk_size=100, local_window=1024), "local_window"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=8, chunk_size=128, memory_capacity=512), "memory_capacity"),
        (dict(eviction="lru"), "eviction"),
        (dict(gate_mode="token"), "gate_mode"),
        (dict(fusion="mixed"), "fusion"),
        (dict(retrieval_query="future"), "retrieval_query"),
        (dict(search_backend="annoy"), "search_backend"),
        (dict(approximate_above=0), "approximate_above"),
        (dict(memory_layer=0, retrieval_layers=(1,)), "memory_layer"),
        (dict(chunk_size="8"), "chunk_size"),
        (dict(evict_target=1.5), "evict_target"),
        (dict(bank_dtype="int4"), "bank_dtype"),
        (dict(retrieval_offsets=()), "retrieval_offsets"),
        (dict(bank_device="gpu"), "bank_device"),
        (dict(bank_mmap_dir="/tmp/x"), "bank_mmap_dir"),
        (dict(retrieval_offsets=(0, 0)), "retrieval_offsets"),
        (dict(retrieval_offsets=(0, 99)), "retrieval_offsets"),
        (dict(retrieval_offsets="0,1"), "retrieval_offsets"),
        (dict(lexical_weight=-0.1), "lexical_weight"),
        (dict(lexical_weight="0.2"), "lexical_weight"),
        (dict(lexical_weight=float("nan")), "lexical_weight"),
        (dict(question_offsets=()), "question_offsets"),
        (dict(question_offsets=(0, 0)), "question_offsets"),
        (dict(question_order="best"), "question_order"),
        (dict(question_reread=1), "question_reread"),
        (dict(question_window="yes"), "question_window"),
        (dict(question_tail=200), "question_tail"),
        (dict(question_tail=True), "question_tail"),
        (dict(question_score_ratio=1.5), "question_score_ratio"),
        (dict(question_score_ratio=True), "question_score_ratio"),
        (dict(question_fresh_window=1), "question_fresh_window"),
    ],
)
def test_invalid_values_name_the_field(kwargs, field):
    with pytest.raises(MemLongConfigError, match=f"MemLongConfig.{field}"):
        MemLongConfig(**kwargs)


def test_model_dependent_checks():
    c = MemLongConfig(
        memory_layer=2, retrieval_layers=(3, 9), chunk_size=8, top_k=2, memory_capacity=64, local_window=32
    )
    with pytest.raises(MemLongConfigError, match="beyond the model"):
        c.validate_for_model(num_layers=4)
    with pytest.raises(MemLongConfigError, match="memory_layer"):
        MemLongConfig(
            memory_layer=4, retrieval_layers=(5,), chunk_size=8, top_k=1, memory_capacity=8, local_window=8
        ).validate_for_model(4)
    with pytest.raises(MemLongConfigError, match="max_position_embeddings"):
        MemLongConfig(
            memory_layer=1, retrieval_layers=(2,), chunk_size=8, top_k=1, memory_capacity=8, local_window=64
        ).validate_for_model(4, max_positions=32)


def test_unknown_field_and_corrupt_json(tmp_path):
    with pytest.raises(MemLongConfigError, match="unknown MemLongConfig field"):
        MemLongConfig.from_dict({"memory_layr": 3})
    (tmp_path / "memlong_config.json").write_text("{not json")
    with pytest.raises(MemLongConfigError, match="not valid JSON"):
        MemLongConfig.from_pretrained(tmp_path)


def test_choices_come_from_the_field_types_and_a_retired_field_loads():
    import typing

    from memlong.config import MemLongConfig, MemLongConfigError, _choices

    for name, choices in _choices().items():  # every Literal field is checked against its own values
        for v in choices:
            if v is not None:
                MemLongConfig(**{name: v, **({"mode": "training_free"} if v == "training_free" else {})})
        with pytest.raises(MemLongConfigError, match=name):
            MemLongConfig(**{name: "no-such-value"})
    hints = typing.get_type_hints(MemLongConfig)
    assert set(_choices()) == {n for n, h in hints.items() if "Literal" in str(h)}
    # a config saved before `extra` was retired loads, and compares equal
    old = {**MemLongConfig().to_dict(), "extra": {}}
    assert MemLongConfig.from_dict(old) == MemLongConfig() and MemLongConfig().differences(old) == []
    with pytest.raises(MemLongConfigError, match="extra"):
        MemLongConfig.from_dict({**old, "extra": {"x": 1}})
