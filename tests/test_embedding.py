"""The input embedding stored in fewer bytes (corolab.serving.backends.cpu.embedding): every looked-up row is
the float32 row it stands for, bit for bit, and a table that no smaller form holds exactly stays as it is."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from corolab.serving.backends.cpu.embedding import (  # noqa: E402
    GROUP, Int8GroupEmbedding, NarrowEmbedding, compact_embedding, compact_input_embedding, int8_groups)


def _q8_table(rows: int, dim: int, seed: int = 0) -> torch.Tensor:
    """A table as a Q8_0 GGUF dequantizes: int8 codes, each group's largest 127 (its largest value set the
    scale), times a float16 scale per group."""
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (rows, dim // GROUP, GROUP), generator=gen)
    codes[..., 0] = torch.where(torch.rand(rows, dim // GROUP, generator=gen) < 0.5, 127, -127)
    scales = (torch.rand(rows, dim // GROUP, 1, generator=gen) * 1e-3).half().float()
    return (codes.float() * scales).view(rows, dim)


def _all_rows(module: torch.nn.Module, rows: int) -> torch.Tensor:
    return module(torch.arange(rows))


def test_a_q8_table_is_stored_as_codes_and_gives_back_every_value():
    table = _q8_table(5000, 96)  # more rows than one chunk of the check
    compact = compact_embedding(torch.nn.Embedding.from_pretrained(table))
    assert isinstance(compact, Int8GroupEmbedding)
    assert compact.codes.dtype == torch.int8 and compact.codes.shape == table.shape
    assert torch.equal(_all_rows(compact, 5000), table)
    ids = torch.tensor([[4999, 0, 17], [17, 17, 3]])  # any shape of ids, repeats included
    assert torch.equal(compact(ids), table[ids])


def test_a_group_off_the_int8_grid_anywhere_keeps_the_table():
    table = _q8_table(300, 64)
    table[211, 5] += 1e-7  # one value no code times its group's scale gives
    assert int8_groups(table, chunk=64) is None
    embedding = torch.nn.Embedding.from_pretrained(table)
    assert compact_embedding(embedding) is embedding


def test_a_bfloat16_valued_table_is_stored_in_bfloat16():
    table = torch.randn(200, 48).bfloat16().float()
    compact = compact_embedding(torch.nn.Embedding.from_pretrained(table))
    assert isinstance(compact, NarrowEmbedding) and compact.table.dtype == torch.bfloat16
    rows = _all_rows(compact, 200)
    assert rows.dtype == torch.float32 and torch.equal(rows, table)


def test_a_full_precision_table_stays_as_it_is():
    embedding = torch.nn.Embedding.from_pretrained(torch.randn(200, 64))
    assert compact_embedding(embedding) is embedding


def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(model.model.embed_tokens.weight.bfloat16().float())
    return model


def test_a_tied_head_keeps_the_float_table_and_an_untied_one_lets_it_go():
    tied = _tiny_llama(tied=True)
    compact_input_embedding(tied)
    assert isinstance(tied.get_input_embeddings(), torch.nn.Embedding)

    untied = _tiny_llama(tied=False)
    ids = torch.tensor([[1, 5, 9, 95]])
    with torch.inference_mode():
        want = untied(input_ids=ids).logits
        compact_input_embedding(untied)
        got = untied(input_ids=ids).logits
    assert isinstance(untied.get_input_embeddings(), NarrowEmbedding)
    assert torch.equal(got, want)  # the model's own forward, through the stand-in: the same logits


@pytest.mark.model
def test_the_embedded_model_keeps_its_exact_embedding_in_a_quarter_of_the_bytes(smol):
    """The served model's embedding is the GGUF's Q8_0 table: a fourth of float32's bytes (and a little for the
    scales), with every row the converted checkpoint's float32 row, so no reply can change."""
    from safetensors import safe_open

    from corolab.serving.backends.embedded import converted_dir

    embedding = smol.model.get_input_embeddings()
    assert isinstance(embedding, Int8GroupEmbedding)
    with safe_open(str(converted_dir() / "model.safetensors"), "pt") as checkpoint:
        table = checkpoint.get_tensor("model.embed_tokens.weight")
    assert torch.equal(_all_rows(embedding, table.shape[0]), table)
    stored = embedding.codes.nbytes + embedding.scales.nbytes
    assert stored < 0.3 * table.nbytes
