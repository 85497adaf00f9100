"测试 distill_edu.generate：采样函数、KV 缓存、TextGenerator、load_trained_model"
import math
import re

import pytest
import torch

from distill_edu.config import ModelConfig, TrainingConfig
from distill_edu.tokenizer import load_tokenizer
from distill_edu.generate import (STRATEGIES, KVCache, StaticDecoder, penalize_repeats, StaticKVCache, TextGenerator, apply_temperature,
                                  check_sampling_args, decode_steps, left_pad, load_trained_model, sample_next_token,
                                  static_decode_step, top_k_filter, top_p_filter)
from distill_edu.checkpoint import check_tokenizer_vocab, export_hf
from distill_edu.model import StudentModel, to_hf_qwen2


# —— 夹具 ——
@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(offline=True)


def small_config(vocab_size, **kw):
    return ModelConfig(**{**dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                                 vocab_size=vocab_size, max_seq_len=96), **kw})


@pytest.fixture(scope="module")
def student(tok):
    torch.manual_seed(0)
    return StudentModel(small_config(len(tok))).eval()


@pytest.fixture(scope="module")
def gen(student, tok):
    return TextGenerator(student, tok)


def chain_student(tok, chain: list[int], strength: float = 5.0) -> StudentModel:
    """手工写权重的 StudentModel：当前 token 为 chain[i] 时，下一个 token 的 logit 在 chain[i+1] 处为 strength，
    其余为 0（注意力与 FFN 的输出投影置零，隐藏向量只取决于当前 token）。用来确定性地产出给定的 token 序列。"""
    cfg = small_config(len(tok), hidden_size=128, tie_word_embeddings=False)
    distinct = sorted(set(chain))
    assert len(distinct) <= cfg.hidden_size
    col = {t: i for i, t in enumerate(distinct)}
    model = StudentModel(cfg)
    with torch.no_grad():
        for p in model.parameters(): p.zero_()
        for norm in [model.final_norm] + [m for l in model.layers for m in (l.attn_norm, l.ffn_norm)]:
            norm.weight.fill_(1.0)
        model.embedding.weight[distinct, torch.arange(len(distinct))] = 1.0
        for prev, nxt in zip(chain, chain[1:]):
            model.lm_head.weight[nxt, col[prev]] = strength / cfg.hidden_size ** 0.5
    return model.eval()


# —— 采样函数 ——
def top_p_by_loop(probs, p):
    kept, mass = set(), 0.0
    for i in sorted(range(len(probs)), key=lambda i: -probs[i]):
        kept.add(i); mass += probs[i]
        if mass >= p: break
    return kept


def test_top_p_keeps_smallest_set_whose_mass_reaches_p():
    g = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(300):
        logits = torch.randn(40, generator=g) * (trial % 6 + 0.3)
        p = [0.05, 0.3, 0.5, 0.8, 0.9, 0.99][trial % 6]
        probs = torch.softmax(logits.double(), -1)
        sorted_p = probs.sort(descending=True).values
        if (sorted_p.cumsum(-1) - p).abs().min() < 1e-5: continue   # 恰好落在边界上的情形由浮点决定，跳过
        kept = torch.isfinite(top_p_filter(logits, p)).nonzero().flatten().tolist()
        assert set(kept) == top_p_by_loop(probs.tolist(), p), (trial, p)
        mass = probs[kept].sum().item()
        assert mass >= p                                              # 达到 p
        assert mass - probs[kept].min().item() < p                    # 去掉最小的一个就不够：最小
        assert probs[kept].min() >= probs[[i for i in range(40) if i not in kept]].max()   # 是概率最大的那些
        checked += 1
    assert checked > 250


def test_top_p_always_keeps_at_least_one_and_p_one_keeps_all():
    peaked = torch.tensor([[20.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert torch.isfinite(top_p_filter(peaked, 0.5)).sum(-1).tolist() == [1, 2]
    assert torch.isfinite(top_p_filter(peaked, 1e-9)).sum(-1).tolist() == [1, 1]
    assert torch.isfinite(top_p_filter(torch.randn(3, 50), 1.0)).all()


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.randn(5, 100)
    kept = torch.isfinite(top_k_filter(logits, 7))
    assert (kept.sum(-1) == 7).all()
    assert (kept == (logits >= logits.topk(7).values[:, -1:])).all()
    assert torch.equal(top_k_filter(logits, 7)[kept], logits[kept])
    assert torch.isfinite(top_k_filter(logits, 1000)).all()           # k > V：全部保留


def test_temperature_keeps_order_and_changes_sharpness():
    logits = torch.randn(4, 50)
    entropy = lambda t: -(torch.softmax(apply_temperature(logits, t), -1) *
                          torch.log_softmax(apply_temperature(logits, t), -1)).sum(-1)
    assert (apply_temperature(logits, 0.3).argsort() == logits.argsort()).all()
    assert (entropy(0.5) < entropy(1.0)).all() and (entropy(1.0) < entropy(2.0)).all()
    assert (entropy(100.0) > math.log(50) - 0.01).all()               # τ → ∞：趋于均匀


def test_sample_next_token():
    logits = torch.randn(6, 30)
    assert torch.equal(sample_next_token(logits, "greedy"), logits.argmax(-1))
    draw = lambda seed, **kw: sample_next_token(logits, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(3, strategy="top_p"), draw(3, strategy="top_p"))
    top3 = logits.topk(3).indices
    for seed in range(30):                                             # top-k 只会抽到最大的 k 个
        tokens = draw(seed, strategy="top_k", top_k=3, temperature=2.0)
        assert (top3 == tokens[:, None]).any(-1).all()
    assert sample_next_token(logits, "top_k").dtype == torch.int64


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategy="beam"), "'beam'"), (dict(temperature=0), "greedy"), (dict(temperature=-0.5), "-0.5"),
    (dict(top_k=0), "top_k"), (dict(top_k=2.5), "2.5"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.01), "1.01"),
    (dict(temperature=float("inf")), "temperature 必须是有限的数字"), (dict(top_p=float("nan")), "top_p 必须是有限的数字")])
def test_bad_sampling_args(kwargs, match):
    with pytest.raises(ValueError, match=match): check_sampling_args(**kwargs)


# —— KV 缓存 ——
def test_kv_cache_update_advance_reset():
    cache = KVCache(num_layers=2, batch_size=1, num_kv_heads=2, max_seq_len=6, head_dim=4)
    k = torch.randn(1, 2, 4, 4)
    for layer in range(2):
        k_all, v_all = cache.update(layer, k, 2 * k)
        assert torch.equal(k_all, k) and torch.equal(v_all, 2 * k)
    assert cache.seq_len == 0                                          # update 不前进
    cache.advance(4)
    k_new = torch.randn(1, 2, 1, 4)
    k_all, _ = cache.update(0, k_new, k_new)
    assert k_all.shape == (1, 2, 5, 4) and torch.equal(k_all[:, :, :4], k) and torch.equal(k_all[:, :, 4:], k_new)
    cache.advance(1)
    with pytest.raises(ValueError, match="max_seq_len=6"): cache.update(0, torch.randn(1, 2, 2, 4), torch.randn(1, 2, 2, 4))
    with pytest.raises(ValueError, match="advance"): cache.advance(2)
    with pytest.raises(ValueError, match="layer_idx=2"): cache.update(2, k_new, k_new)
    with pytest.raises(ValueError, match="B=1"): cache.update(0, torch.randn(3, 2, 1, 4), torch.randn(3, 2, 1, 4))
    with pytest.raises(ValueError, match="max_seq_len"): KVCache(2, 1, 2, 0, 4)
    cache.reset()
    assert cache.seq_len == 0 and cache.update(1, k, k)[0].shape[2] == 4


def test_kv_cache_for_model_follows_model_dtype_and_config():
    model = StudentModel(small_config(300, num_layers=3)).double()
    cache = KVCache.for_model(model, batch_size=3, max_seq_len=10)
    assert cache.keys[0].shape == (3, 2, 10, 16) and cache.keys[0].dtype == torch.float64
    assert len(cache.keys) == len(cache.values) == 3
    assert KVCache.for_model(model, batch_size=1).max_seq_len == model.config.max_seq_len


def test_cached_logits_equal_uncached_at_every_step(student):
    torch.manual_seed(1)
    seq = torch.randint(0, student.config.vocab_size, (3, 20))
    mask = torch.ones_like(seq)
    mask[0, :4] = 0; mask[1, :9] = 0                                   # 左填充的批量
    P = 10
    with torch.no_grad():
        full = student(seq, attention_mask=mask)
        cache = KVCache.for_model(student, batch_size=3)
        steps = [student(seq[:, :P], attention_mask=mask[:, :P], kv_cache=cache)[:, -1]]
        for t in range(P, seq.shape[1]):
            steps.append(student(seq[:, t:t + 1], attention_mask=mask[:, :t + 1], kv_cache=cache)[:, -1])
    assert cache.seq_len == seq.shape[1]
    for i, logits in enumerate(steps):
        torch.testing.assert_close(logits, full[:, P - 1 + i], rtol=1e-4, atol=1e-5)


def test_model_refuses_to_decode_past_cache_capacity(student):
    cache = KVCache.for_model(student, batch_size=1, max_seq_len=5)
    with torch.no_grad():
        student(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="max_seq_len=5"):
            student(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


# —— 静态缓存（CUDA graph 录的就是这一步；这里在 CPU 上逐步直接调用）——
def padded_batch(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids); mask[0, :5] = 0; mask[2, :2] = 0
    return ids, mask


def test_static_step_logits_equal_dynamic_cache_at_every_step(student):
    seq, mask = padded_batch(student.config.vocab_size)
    seq = torch.cat([seq, torch.randint(0, 100, (3, 6))], 1)
    mask = torch.cat([mask, torch.ones(3, 6, dtype=torch.long)], 1)
    P = 9
    with torch.no_grad():
        dyn, static = KVCache.for_model(student, 3), StaticKVCache.for_model(student, 3)
        a = [student(seq[:, :P], attention_mask=mask[:, :P], kv_cache=dyn)[:, -1]]
        b = [student(seq[:, :P], attention_mask=mask[:, :P], kv_cache=static)[:, -1]]
        static.start_decoding(mask[:, :P])
        position = mask[:, :P].sum(-1, keepdim=True)
        for t in range(P, seq.shape[1]):
            a.append(student(seq[:, t:t + 1], attention_mask=mask[:, :t + 1], kv_cache=dyn)[:, -1])
            b.append(static_decode_step(student, static, seq[:, t:t + 1], position))
    for x, y in zip(a, b): torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-5)
    assert static.slot.item() == seq.shape[1] and static.keys[0].shape[2] == student.config.max_seq_len
    assert position[:, 0].tolist() == mask.sum(-1).tolist()
    assert static.key_mask.sum(-1).tolist() == mask.sum(-1).tolist()     # 填充与没写过的槽位都不可见


def test_static_cache_writes_only_the_slot_and_needs_start_decoding():
    cache = StaticKVCache(num_layers=1, batch_size=2, num_kv_heads=1, max_seq_len=6, head_dim=2)
    k = torch.randn(2, 1, 3, 2)
    assert cache.update(0, k, k)[0].shape[2] == 3                         # 预填充：与 KVCache 相同，返回切片
    cache.advance(3)
    with pytest.raises(ValueError, match=r"\(2, 3\)"): cache.start_decoding(torch.ones(2, 4, dtype=torch.long))
    cache.start_decoding(torch.tensor([[0, 1, 1], [1, 1, 1]]))
    new = torch.randn(2, 1, 1, 2)
    k_all, _ = cache.update(0, new, new)
    assert k_all.shape == (2, 1, 6, 2) and torch.equal(k_all[:, :, 3:4], new) and torch.equal(k_all[:, :, :3], k)
    assert not k_all[:, :, 4:].any()
    assert cache.key_mask.tolist() == [[False, True, True, False, False, False], [True, True, True, False, False, False]]
    with pytest.raises(ValueError, match="1 个 token"): cache.update(0, k, k)
    cache.reset()
    assert not cache.decoding and cache.update(0, k, k)[0].shape[2] == 3


@pytest.mark.parametrize("sampling", [dict(), dict(strategy="top_k", top_k=20, temperature=1.3, seed=4),
                                      dict(strategy="top_p", top_p=0.9, seed=11)])
def test_static_decoder_equals_dynamic_loop_token_for_token(student, sampling):
    ids, mask = padded_batch(student.config.vocab_size, seed=1)
    dec = StaticDecoder(student, batch_size=3)
    run = lambda **kw: torch.stack(list(decode_steps(student, ids, mask, 30, vocab_limit=500, **sampling, **kw)), 1)
    dynamic = run()
    assert torch.equal(run(decoder=dec), dynamic)
    assert torch.equal(run(decoder=dec), dynamic)                      # 同一个解码器再用一次：prefill 重置了缓存
    assert (dynamic < 500).all()


def test_static_decoder_batched_equals_one_by_one(student):
    ids, mask = padded_batch(student.config.vocab_size, seed=2)
    batched = torch.stack(list(decode_steps(student, ids, mask, 12, decoder=StaticDecoder(student, 3))), 1)
    one = StaticDecoder(student, 1)
    for row in range(3):
        real = ids[row:row + 1, mask[row].bool()]
        alone = torch.stack(list(decode_steps(student, real, torch.ones_like(real), 12, decoder=one)), 1)
        assert torch.equal(alone[0], batched[row]), row


def test_static_decoder_errors(student):
    ids, mask = padded_batch(student.config.vocab_size)
    dec = StaticDecoder(student, batch_size=3, max_seq_len=20)
    with pytest.raises(ValueError, match="max_seq_len=20"): list(decode_steps(student, ids, mask, 13, decoder=dec))
    assert len(list(decode_steps(student, ids, mask, 12, decoder=dec))) == 12       # 9 + 12 - 1 = 20 个槽位，刚好装下
    with pytest.raises(ValueError, match="batch=3"): list(decode_steps(student, ids[:2], mask[:2], 4, decoder=dec))
    with pytest.raises(ValueError, match="CUDA"): StaticDecoder(student, 1, cuda_graph=True)
    with pytest.raises(ValueError, match="CUDA"): StaticDecoder(student, 1, compile=True)


def test_generator_uses_plain_loop_on_cpu_and_names_bad_compile_flag(student, tok):
    g = TextGenerator(student, tok)
    assert not g.cuda_graphs and g._decoder(2, 10, use_cache=True) is None
    with pytest.raises(ValueError, match="compile=True"): TextGenerator(student, tok, compile=True)


def test_eos_stops_each_row_even_between_checks(tok):
    "EOS 每 EOS_CHECK_EVERY 步才检查一次：检查之前出现的 EOS 也要把那一行截在 EOS 之前"
    chain = tok.encode("你好世界", add_special_tokens=False) + [tok.eos_token_id] + tok.encode("再见", add_special_tokens=False)
    e = chain.index(tok.eos_token_id)
    assert e + 1 < 8                                                   # EOS 出现在第一次检查之前
    g = TextGenerator(chain_student(tok, chain), tok)
    out = g.generate_ids([tok.decode(chain[:1]), tok.decode(chain[e + 1:e + 2])], max_new_tokens=20)
    assert out[0] == chain[:e]                                          # 第一行停在 EOS 之前
    assert out[1][:len(chain) - e - 1] == chain[e + 1:] and len(out[1]) == 1 + 20   # 第二行没有 EOS：生成满 20 个


# —— TextGenerator ——
def test_generator_puts_model_in_eval_mode(tok):
    model = StudentModel(small_config(len(tok))).train()
    assert not TextGenerator(model, tok).model.training


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_gives_nonempty_text_within_length_bound(gen, strategy):
    prompt = "知识蒸馏"
    n_prompt = len(gen.encode(prompt))
    ids = gen.generate_ids([prompt], max_new_tokens=6, strategy=strategy, seed=0)[0]
    text = gen.generate(prompt, max_new_tokens=6, strategy=strategy, seed=0)
    assert isinstance(text, str) and text.startswith(prompt) and len(text) > len(prompt)
    assert n_prompt < len(ids) <= n_prompt + 6
    assert text == gen.decode(ids)


def test_greedy_equals_hf_generate(gen, student):
    hf = to_hf_qwen2(student)
    prompts = ["床前明月光，", "知识蒸馏是一种把大模型的能力迁移到小模型的方法。"]
    ours = gen.generate_ids(prompts, max_new_tokens=10)
    ids, mask = left_pad([gen.encode(p) for p in prompts], gen.pad_id)
    theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False,
                         eos_token_id=sorted(gen.eos_ids), pad_token_id=gen.pad_id)[:, ids.shape[1]:]
    assert [o[len(gen.encode(p)):] for o, p in zip(ours, prompts)] == theirs.tolist()


def test_batched_left_padding_equals_one_by_one(gen):
    prompts = ["春", "床前明月光，疑是地上霜。", "知识蒸馏"]
    assert gen.generate(prompts, max_new_tokens=8) == [gen.generate(p, max_new_tokens=8) for p in prompts]


def test_uncached_generation_equals_cached(gen):
    assert gen.generate("床前明月光，", 8, use_cache=False) == gen.generate("床前明月光，", 8)


def test_seeded_sampling_is_reproducible(gen):
    run = lambda seed: gen.generate("春眠不觉晓，", 10, strategy="top_p", top_p=0.95, seed=seed)
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_temperature_changes_the_output(gen, tok):
    low = gen.generate("春眠不觉晓，", 10, strategy="top_k", temperature=0.1, seed=0)
    high = gen.generate("春眠不觉晓，", 10, strategy="top_k", temperature=1.5, seed=0)
    assert low != high
    chain = tok.encode("白日依山尽，黄河入海流。", add_special_tokens=False)
    g = TextGenerator(chain_student(tok, chain), tok)
    prompt = tok.decode(chain[:2])
    greedy = g.generate(prompt, 8)
    assert greedy == tok.decode(chain[:10])
    assert g.generate(prompt, 8, strategy="top_p", temperature=0.1, seed=0) == greedy     # 低温 ≈ 贪心
    assert g.generate(prompt, 8, strategy="top_p", temperature=1.5, seed=0) != greedy     # 高温：长尾被抬起


def test_stops_at_eos_tokens(tok):
    for eos in ("<|endoftext|>", "<|im_end|>"):
        chain = tok.encode("你好世界", add_special_tokens=False) + [tok.convert_tokens_to_ids(eos)]
        g = TextGenerator(chain_student(tok, chain), tok)
        ids = g.generate_ids([tok.decode(chain[:1])], max_new_tokens=20)[0]
        assert ids == chain[:-1], eos


def test_stream_joins_to_the_same_text(gen):
    kw = dict(max_new_tokens=12, strategy="top_p", temperature=1.2, seed=5)
    pieces = list(gen.generate("床前明月光，", stream=True, **kw))
    assert pieces[0] == "床前明月光，" and len(pieces) > 2
    assert "".join(pieces) == gen.generate("床前明月光，", **kw)


def test_stream_never_emits_half_a_character(tok):
    text = "鱻龘𠀀蒸馏"
    chain = tok.encode("三" + text, add_special_tokens=False) + [tok.eos_token_id]
    assert len(chain) > len("三" + text) + 2                            # 确有被拆成多个 token 的字
    g = TextGenerator(chain_student(tok, chain), tok)
    pieces = list(g.generate("三", max_new_tokens=20, stream=True))
    assert "".join(pieces) == "三" + text == g.generate("三", max_new_tokens=20)
    assert not any("\ufffd" in p for p in pieces), pieces
    assert {"鱻", "龘", "𠀀"} <= set(pieces)                            # 生僻字各自完整地作为一段交出


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=""), "prompt"), (dict(prompt=[]), "prompt"), (dict(prompt=["ok", ""]), "prompt"),
    (dict(prompt=None), "prompt"),
    (dict(max_new_tokens=0), "max_new_tokens"), (dict(max_new_tokens=-3), "-3"), (dict(max_new_tokens=2.0), "2.0"),
    (dict(strategy="beam_search"), "beam_search"), (dict(strategy="top_k", top_k=0), "top_k"),
    (dict(strategy="top_p", top_p=0.0), "top_p"), (dict(strategy="top_p", top_p=1.5), "1.5"),
    (dict(temperature=0.0), "greedy"), (dict(temperature=-1.0), "-1.0"),
    (dict(prompt="明月光，" * 40), "max_seq_len=96"), (dict(prompt="你好", max_new_tokens=200), "max_new_tokens=200"),
    (dict(prompt=["a", "b"], stream=True), "stream")])
def test_bad_generate_inputs(gen, kwargs, match):
    kwargs = {"prompt": "你好", "max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        out = gen.generate(**kwargs)
        if kwargs.get("stream"): list(out)


@pytest.mark.parametrize("prompt, stream", [("知识蒸馏", False), (["你好", "知识蒸馏"], False), ("知识蒸馏", True)])
def test_prompt_ids_beyond_a_small_model_vocab_are_named(tok, prompt, stream):
    "分词器（151665）比模型的词表（1000）大：越界的编号点名报错，而不是嵌入层的 “index out of range in self”"
    narrow = TextGenerator(StudentModel(small_config(1000)), tok)
    with pytest.raises(ValueError, match=r"prompt=.* 的 token 编号（模型 vocab_size=1000） 中有超出词表 \[0, 1000\)"):
        out = narrow.generate(prompt, 4, stream=stream)
        if stream: list(out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="只在没有 GPU 的机器上检查")
@pytest.mark.parametrize("make", [lambda m, t, p: TextGenerator(m, t, device="cuda"),
                                  lambda m, t, p: load_trained_model(p, device="cuda")])
def test_cuda_without_gpu_is_named(tmp_path, student, tok, make):
    path = tmp_path / "m.pt"
    torch.save({"model": student.state_dict(), "model_config": student.config.to_dict()}, path)
    with pytest.raises(ValueError, match="设备 'cuda' 不可用"): make(student, tok, path)


def test_bad_stream_inputs_fail_before_iteration(gen):
    with pytest.raises(ValueError, match="max_new_tokens"): gen.generate("你好", 0, stream=True)


# —— load_trained_model ——
def logits_of(model, ids):
    with torch.no_grad(): return model(ids)


def test_load_trainer_checkpoint(tmp_path, student):
    from torch.utils.data import DataLoader
    from distill_edu.trainer import DistillationTrainer
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "labels": torch.zeros(2, 8, dtype=torch.long)}
    loader = DataLoader([{k: v[0] for k, v in batch.items()}] * 2, batch_size=2)
    cfg = TrainingConfig(alpha=0.0, max_steps=1, warmup_steps=1, checkpoint_dir=str(tmp_path), seq_len=8, precision="fp32")
    trainer = DistillationTrainer(student, None, loader, loader, cfg, progress=False)
    path = trainer.save_checkpoint()
    model = load_trained_model(path)
    ids = torch.randint(0, student.config.vocab_size, (1, 6))
    assert isinstance(model, StudentModel) and not model.training and model.config == student.config
    torch.testing.assert_close(logits_of(model, ids), logits_of(student, ids))


def test_load_weights_only_checkpoint_and_hf_directory(tmp_path, student):
    ids = torch.randint(0, student.config.vocab_size, (2, 5))
    state = {"_orig_mod." + k: v for k, v in student.state_dict().items()}      # torch.compile 过的键名
    torch.save({"model_state_dict": state, "model_config": student.config.to_dict()}, tmp_path / "w.pt")
    export_hf(student, load_tokenizer(offline=True), tmp_path / "hf")
    for source in (tmp_path / "w.pt", tmp_path / "hf"):
        model = load_trained_model(source, device="cpu")
        assert isinstance(model, StudentModel) and not model.training
        torch.testing.assert_close(logits_of(model, ids), logits_of(student, ids))


def test_load_trained_model_errors(tmp_path, student):
    with pytest.raises(FileNotFoundError, match="nope.pt"): load_trained_model(tmp_path / "nope.pt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"): load_trained_model(tmp_path / "empty_dir")
    (tmp_path / "corrupt.pt").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt.pt"): load_trained_model(tmp_path / "corrupt.pt")
    torch.save({"model": student.state_dict()}, tmp_path / "no_config.pt")
    with pytest.raises(ValueError, match="model_config"): load_trained_model(tmp_path / "no_config.pt")
    torch.save({"model_config": student.config.to_dict()}, tmp_path / "no_weights.pt")
    with pytest.raises(ValueError, match="model_state_dict"): load_trained_model(tmp_path / "no_weights.pt")
    bad_cfg = {**student.config.to_dict(), "num_layers": 3}
    torch.save({"model": student.state_dict(), "model_config": bad_cfg}, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="不匹配"): load_trained_model(tmp_path / "mismatch.pt")
    torch.save({"model": student.state_dict(), "model_config": {"hiden": 1}}, tmp_path / "bad_cfg.pt")
    with pytest.raises(ValueError, match="model_config"): load_trained_model(tmp_path / "bad_cfg.pt")


def test_decode_steps_masks_rows_beyond_the_tokenizer(student):
    "教师词表有填充行：vocab_limit 之外的编号永远不会被采样"
    ids = torch.randint(0, 100, (2, 4))
    limit = 50
    for strategy in STRATEGIES:
        out = torch.stack(list(decode_steps(student, ids, torch.ones_like(ids), 6, strategy=strategy,
                                            temperature=2.0, seed=0, vocab_limit=limit)), 1)
        assert (out < limit).all(), strategy


# —— export_hf：别人只用 transformers 就能读回 ——
def test_export_hf_round_trips_through_auto_classes(tmp_path, student, tok):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = export_hf(student, tok, tmp_path / "hf")
    hf, hf_tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert len(hf_tok) == len(tok) and hf_tok.encode("知识蒸馏") == tok.encode("知识蒸馏")
    eos = hf.generation_config.eos_token_id
    assert set(eos if isinstance(eos, list) else [eos]) == {tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>")}
    assert hf.generation_config.pad_token_id == tok.pad_token_id
    ids = torch.tensor([hf_tok.encode("今天天气很好")])
    with torch.no_grad(): torch.testing.assert_close(hf(ids).logits, student(ids))
    reloaded = TextGenerator(load_trained_model(out), hf_tok)            # 读回的模型 + 读回的分词器：同样的贪心续写
    assert reloaded.generate("今天", 6) == TextGenerator(student, tok).generate("今天", 6)


def test_export_hf_refuses_mismatched_tokenizers(tmp_path, tok):
    narrow = StudentModel(small_config(1000))
    with pytest.raises(ValueError, match="151665 个 token，比模型的 1000 行词表还多"): export_hf(narrow, tok, tmp_path / "a")
    wide = StudentModel(small_config(len(tok) + 5000))
    with pytest.raises(ValueError, match="配不上有 156665 行词表的模型"): export_hf(wide, tok, tmp_path / "b")
    with pytest.raises(ValueError, match="save_pretrained"): export_hf(narrow, object(), tmp_path / "c")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()          # 检查在写盘之前
    check_tokenizer_vocab(tok, len(tok) + 271, "Qwen2.5 的 271 行填充")                 # 少量填充行是允许的


def test_weights_only_hf_folder_is_refused_by_name(tmp_path, student):
    from transformers import AutoTokenizer
    folder = tmp_path / "weights_only"
    to_hf_qwen2(student).save_pretrained(folder)                        # 忘了存分词器
    with pytest.raises(FileNotFoundError, match=re.escape(f"{folder} 里只有模型、没有分词器")): load_trained_model(folder)
    empty = AutoTokenizer.from_pretrained(folder)                       # transformers 不报错，给出 1 个 token 的分词器
    assert len(empty) < 10
    with pytest.raises(ValueError, match=re.escape(f"分词器 '{folder}' 只有 {len(empty)} 个 token")): TextGenerator(student, empty)
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"{folder} 里的分词器读不出来")): load_trained_model(folder)


def test_penalize_repeats_only_touches_seen_tokens():
    z = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, 1.0, 1.0]])
    seen = torch.tensor([[0, 1, 1], [3, 3, 3]])
    out = penalize_repeats(z, seen, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, 1.0, 0.5]]))
    assert penalize_repeats(z, seen, 1.0) is z


def test_repetition_penalty_and_suppress_ids_in_all_decoding_paths():
    "动态缓存、不用缓存、静态缓存（不录图）三条路径在重复惩罚 + 禁用编号下逐 token 相同；禁用的编号从不出现"
    torch.manual_seed(0)
    m = StudentModel(ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                                 vocab_size=50, max_seq_len=64)).eval()
    ids, mask = left_pad([[1, 2, 3], [4, 5]], 0)
    kw = dict(repetition_penalty=3.0, suppress_ids=(7, 27))
    plain = torch.stack(list(decode_steps(m, ids, mask, 16)), 1)
    cached = torch.stack(list(decode_steps(m, ids, mask, 16, **kw)), 1)
    uncached = torch.stack(list(decode_steps(m, ids, mask, 16, use_cache=False, **kw)), 1)
    static = torch.stack(list(decode_steps(m, ids, mask, 16, decoder=StaticDecoder(m, 2, 32, cuda_graph=False), **kw)), 1)
    assert torch.equal(cached, uncached) and torch.equal(cached, static)
    assert not torch.isin(cached, torch.tensor([7, 27])).any()
    assert not torch.equal(cached, plain)                       # 惩罚确实改变了输出
    with pytest.raises(ValueError, match="repetition_penalty"):
        next(decode_steps(m, ids, mask, 4, repetition_penalty=0.5))
