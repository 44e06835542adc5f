"""Model facts from config.json: the two lookups (top level first, text_config first)."""

from mlxhost.core import model_config

TEXT = {"vocab_size": 151936, "max_position_embeddings": 32768, "eos_token_id": 151645}
VLM = {
    "eos_token_id": [1, 106],
    "text_config": {"vocab_size": 262208, "max_position_embeddings": 131072,
                    "eos_token_id": 2, "head_dim": 256},
    "head_dim": 64,
}


def test_top_level_wins_for_vocab_and_context():
    assert model_config.vocab_size(TEXT) == 151936
    assert model_config.context_window(TEXT) == 32768
    assert model_config.vocab_size(VLM) == 262208
    assert model_config.context_window({"max_position_embeddings": 8, **VLM}) == 8


def test_text_config_wins_for_language_facts():
    assert model_config.language_fact(VLM, "head_dim") == 256
    assert model_config.language_fact({"head_dim": 64}, "head_dim") == 64


def test_bad_values_are_no_facts():
    assert model_config.vocab_size({"vocab_size": True}) is None
    assert model_config.vocab_size({"vocab_size": 0, "text_config": "x"}) is None
    assert model_config.context_window({}) is None


def test_eos_ids_from_every_source_and_text_config():
    assert model_config.eos_ids(TEXT) == {151645}
    assert model_config.eos_ids(VLM, {"eos_token_id": [7]}) == {1, 106, 2, 7}
