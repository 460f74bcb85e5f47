"""Generation behaviour on the tiny checkpoints: KV cache vs recomputation, batching, streaming,
cancellation, stop strings, context limits, multi-image / multi-turn / video layouts, feature reuse."""

import threading

import pytest
import torch
from conftest import REFERENCE, TINY
from PIL import Image

from minicpmv import PromptError, PromptTooLongError, load
from minicpmv.generation import GenerationConfig, generate
from minicpmv.processing.detokenize import IncrementalDecoder
from minicpmv.processing.video import frame_indices, load_video_frames

IMAGE = REFERENCE / "images" / "img_b_640x448.png"
QUESTION = [{"role": "user", "content": "What is in the image?"}]


@pytest.fixture(scope="module")
def chat26():
    return load(TINY["2.6"] / "checkpoint")


def test_kv_cache_decoding_equals_full_recomputation(chat26):
    model = chat26.model
    inputs = chat26.processor([{"role": "user", "content": [{"image": IMAGE}, "What is in the image?"]}])
    with torch.inference_mode():
        features = model.features_per_sample(inputs.pixel_values, inputs.tgt_sizes)
        embeds = model.embed_inputs(inputs.input_ids, features, inputs.image_bound)
        out = generate(
            model.llm, embeds, inputs.attention_mask, GenerationConfig(max_new_tokens=6), keep_step_logits=True
        )
        tokens = out.token_ids[0]
        for step in range(len(tokens)):
            prefix = torch.cat([embeds, model.llm.embed(torch.tensor([tokens[:step]], dtype=torch.long))], dim=1)
            full = model.llm(prefix)[:, -1]
            torch.testing.assert_close(out.step_logits[step], full, atol=1e-4, rtol=0)


def test_batched_generation_equals_one_at_a_time(chat26):
    conversations = [
        [{"role": "user", "content": [{"image": IMAGE}, "Describe."]}],
        [{"role": "user", "content": "a short one"}],
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": [Image.new("RGB", (300, 900), "blue"), "and this, a longer question?"]},
        ],
    ]
    batch = chat26.generate_batch(conversations, max_new_tokens=6)
    singles = [chat26.generate(c, max_new_tokens=6) for c in conversations]
    assert [b.token_ids for b in batch] == [s.token_ids for s in singles]
    assert [b.text for b in batch] == [s.text for s in singles]


def test_streaming_equals_non_streaming(chat26):
    for options in ({"max_new_tokens": 12}, {"preset": "sampling", "seed": 5, "max_new_tokens": 12}):
        stream = chat26.stream(QUESTION, image=IMAGE, **options)
        deltas = list(stream)
        assert "".join(deltas) == chat26.chat(QUESTION, image=IMAGE, **options) == stream.result.text
        # no delta but the last ends inside a character (the last may: the answer can stop mid-character)
        assert not any(d.endswith("\ufffd") for d in deltas[:-1])


def test_deltas_never_split_a_multibyte_character(chat26):
    text = "héllo wörld 你好 🙂 done"
    ids = chat26.tokenizer.encode(text)
    decoder, deltas = IncrementalDecoder(chat26.tokenizer), []
    for token in ids:
        deltas.append(decoder.push(token))
    deltas.append(decoder.finish())
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas)
    assert len([d for d in deltas if d]) > 3


def test_stop_strings_end_the_answer_identically_streamed_or_not(chat26):
    full = chat26.generate(QUESTION, image=IMAGE, max_new_tokens=8).text
    stop = full[4:6]
    cut = full[: full.find(stop)].rstrip()
    streamed = chat26.stream(QUESTION, image=IMAGE, max_new_tokens=8, stop=[stop])
    assert "".join(streamed) == cut == streamed.result.text
    assert streamed.result.stopped_by == "stop"
    assert chat26.chat(QUESTION, image=IMAGE, max_new_tokens=8, stop=stop) == cut


def test_cancelling_a_stream_stops_generation_promptly(chat26):
    stream = chat26.stream(QUESTION, max_new_tokens=5000, min_new_tokens=5000)
    next(iter(stream))
    stream.cancel()
    rest = list(stream)
    assert stream.result.stopped_by == "cancelled" and len(stream.result.token_ids) < 10
    assert len(rest) <= 1
    # from another thread, while a consumer is iterating
    stream = chat26.stream(QUESTION, max_new_tokens=5000, min_new_tokens=5000)
    timer = threading.Timer(0.3, stream.cancel)
    timer.start()
    stream.text()
    assert 0 < len(stream.result.token_ids) < 5000


def test_context_and_option_errors(chat26):
    long_text = [{"role": "user", "content": "word " * 9000}]
    with pytest.raises(PromptTooLongError, match="limit of 8192"):
        chat26.chat(long_text)
    with pytest.raises(PromptTooLongError, match="context is 32768"):
        chat26.chat(long_text, max_input_length=100000)
    with pytest.raises(PromptError, match="not beam search"):
        chat26.stream(QUESTION, preset="precise")
    with pytest.raises(PromptError, match="unknown generation option"):
        chat26.chat(QUESTION, top_a=3)
    with pytest.raises(PromptError, match="preset"):
        chat26.chat(QUESTION, preset="creative")
    with pytest.raises(PromptError, match="top_p"):
        chat26.chat(QUESTION, top_p=0.0)


def test_multi_image_multi_turn_layout(chat26):
    small, tall = Image.new("RGB", (60, 40), "red"), Image.new("RGB", (200, 1200), "green")
    messages = [
        {"role": "user", "content": [small, tall, "Compare."]},
        {"role": "assistant", "content": "Different."},
        {"role": "user", "content": [small, "And this one?"]},
    ]
    result = chat26.generate(messages, max_new_tokens=4)
    decoded = chat26.tokenizer.decode(result.prompt_token_ids)
    assert [decoded.count(f"<image_id>{i}</image_id>") for i in range(3)] == [1, 1, 1]
    plans = [chat26.processor.plan(im.size) for im in (small, tall, small)]
    assert result.image_tokens == sum(p.num_crops for p in plans) * 64
    assert decoded.index("Compare.") < decoded.index("Different.") < decoded.index("And this one?")


def make_video(path, seconds=3, fps=10):
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(seconds * fps):
            frame = av.VideoFrame.from_image(Image.new("RGB", (64, 48), (i * 8 % 256, 0, 0)))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_video_frames_follow_the_2_6_recipe(chat26, tmp_path):
    assert frame_indices(30, 10.0, fps=1.0, max_frames=64) == [0, 10, 20]
    assert frame_indices(1000, 1.0, fps=1.0, max_frames=4) == [125, 375, 625, 875]
    video = tmp_path / "clip.mp4"
    make_video(video)
    frames = load_video_frames(video, fps=1.0)
    assert len(frames) == 3 and frames[0].size == (64, 48)
    result = chat26.generate([{"role": "user", "content": "What happens?"}], video=video, max_new_tokens=4)
    assert result.image_tokens == 3 * 64  # small frames: one crop each
    assert "<image_id>" not in chat26.tokenizer.decode(result.prompt_token_ids)
    big_frames = [Image.new("RGB", (1344, 896))] * 2
    result = chat26.generate([{"role": "user", "content": "And now?"}], video=big_frames, max_new_tokens=2)
    assert result.image_tokens == 2 * 3 * 64  # max_slice_nums 2 per frame: overview + 2 slices


def test_image_features_are_reused_across_turns(chat26, monkeypatch):
    calls = []
    original = chat26.model.get_image_features
    monkeypatch.setattr(chat26.model, "get_image_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    image = Image.new("RGB", (500, 300), "purple")
    first = [{"role": "user", "content": [image, "What?"]}]
    answer = chat26.chat(first, max_new_tokens=3)
    chat26.chat(
        [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "More?"}], max_new_tokens=3
    )
    assert len(calls) == 1


@pytest.mark.parametrize("version", ["1.0", "2.0", "2.5", "2.6", "4.5"])
def test_low_memory_mode_gives_the_same_answers_with_one_half_resident(version):
    from minicpmv.model.checkpoint import LLM_PARTS

    normal = load(TINY[version] / "checkpoint")
    sequential = load(TINY[version] / "checkpoint", low_memory=True)
    assert all(p.is_meta for p in sequential.model.parameters())  # nothing read before it is needed
    first = [{"role": "user", "content": [{"image": IMAGE}, "What?"]}]
    answer = sequential.generate(first, max_new_tokens=6)
    assert answer.token_ids == normal.generate(first, max_new_tokens=6).token_ids
    assert sequential.residency.resident == LLM_PARTS
    assert all(p.is_meta for p in sequential.model.vpm.parameters())
    assert not any(p.is_meta for p in sequential.model.llm.parameters())
    second = [
        *first,
        {"role": "assistant", "content": answer.text},
        {"role": "user", "content": [Image.new("RGB", (90, 300), "red"), "And this?"]},
    ]
    assert (
        sequential.generate(second, max_new_tokens=6).token_ids == normal.generate(second, max_new_tokens=6).token_ids
    )


def test_crops_per_call_does_not_change_features(chat26):
    crops = [torch.randn(3, 14, 14 * n) for n in (12, 30, 7)]
    sizes = torch.tensor([[3, 4], [5, 6], [1, 7]])
    with torch.inference_mode():
        together = chat26.model.get_image_features(crops, sizes)
        one_by_one = chat26.model.get_image_features(crops, sizes, crops_per_call=1)
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=0)


def test_vision_precision_choice_and_bf16_features_stay_close(monkeypatch):
    """`auto`: bf16 for a float32 model on a CPU with native bf16; on one without, int8 where the
    native kernels run (float32 where they do not); what `minicpmv tune` measured fastest wins
    over both, and None ignores the tuning."""
    import minicpmv.devices as devices_module
    from minicpmv import ConfigError
    from minicpmv.devices import pick_vision_autocast, pick_vision_dtype
    from minicpmv.quant import native

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(devices_module, "has_native_bf16", lambda: True)
    assert pick_vision_dtype("auto", torch.float32, cpu) == "bfloat16"
    assert pick_vision_dtype("auto", torch.bfloat16, cpu) == "bfloat16"  # already bf16
    assert pick_vision_autocast("bfloat16", torch.bfloat16) is None
    assert pick_vision_dtype("auto", torch.float32, cuda) == "float32"
    monkeypatch.setattr(devices_module, "has_native_bf16", lambda: False)
    kernels = "int8" if native.library() is not None else "float32"
    assert pick_vision_dtype("auto", torch.float32, cpu) == kernels  # emulated bf16 is slower
    assert pick_vision_dtype("auto", torch.float32, cuda) == "float32"
    assert pick_vision_dtype("auto", torch.float16, cpu) == "float16"
    monkeypatch.setattr(native, "library", lambda: None)
    assert pick_vision_dtype("auto", torch.float32, cpu) == "float32"
    assert pick_vision_dtype("auto", torch.float32, cpu, tuned="int8") == "int8"
    assert pick_vision_dtype(None, torch.float32, cpu, tuned="int8") == "float32"
    assert pick_vision_dtype("bfloat16", torch.float32, cpu, tuned="int8") == "bfloat16"
    assert pick_vision_autocast("bfloat16", torch.float32) == torch.bfloat16
    assert pick_vision_autocast("float32", torch.float32) is None
    assert pick_vision_autocast("int8", torch.float32) is None  # int8 products, the rest float32
    with pytest.raises(ConfigError, match="vision_dtype"):
        pick_vision_dtype("int3", torch.float32, cpu)
    with pytest.raises(ConfigError, match="vision_dtype"):
        load(TINY["2.6"] / "checkpoint", vision_dtype="int3")

    exact = load(TINY["2.6"] / "checkpoint", vision_dtype="float32")
    fast = load(TINY["2.6"] / "checkpoint", vision_dtype="bfloat16")
    message = [{"role": "user", "content": [{"image": IMAGE}, "What is in the image?"]}]
    features = []
    for chat in (exact, fast):
        inputs = chat.processor(message)
        features.append(chat.images.features(inputs)[0])
    assert features[1].dtype == torch.float32  # handed to the LLM in the model's dtype
    assert not torch.equal(features[0], features[1])  # bf16 did run
    relative = ((features[1] - features[0]).norm() / features[0].norm()).item()
    assert relative < 0.02


def test_packed_video_plan_follows_the_4_5_model_card():
    """4.5 video recipe: about 3 frames a second; past 180 frames, consecutive frames pack into
    groups of up to max_packing; times snap to the 0.1 s grid below the duration."""
    from minicpmv.processing.video import packed_plan

    indices, groups = packed_plan(300, 30.0)  # 10 s at 30 fps: 30 frames, one per group
    assert len(indices) == 30 and all(len(g) == 1 for g in groups)
    # frames 5, 15, 25, 35 (the middle of each tenth of a second's stretch) at 1/6, 1/2, 5/6, 7/6 s
    assert indices[:4] == [5, 15, 25, 35] and [g[0] for g in groups[:4]] == [2, 5, 8, 12]
    indices, groups = packed_plan(200 * 10, 10.0)  # 200 s: 600 frames wanted -> 4 a group > 3
    assert len(indices) == 540 and len(groups) == 180 and {len(g) for g in groups} == {3}
    indices, groups = packed_plan(200 * 10, 10.0, max_packing=6)
    assert len(indices) == 600 and len(groups) == 150 and {len(g) for g in groups} == {4}


def test_packed_video_time_ids_truncate_like_numpy():
    """Quirk: an id is trunc(grid value / 0.1) in float64; the grid's 0.7000000000000001 gives 7,
    a time of 0.3 s snaps to 0.30000000000000004 and gives 3."""
    from minicpmv.processing.video import packed_plan

    _, groups = packed_plan(10, 10.0, fps=10.0)  # 1 s at 10 fps: every frame, ids 0..9
    assert [g[0] for g in groups] == list(range(10))


def test_4_5_video_frames_with_time_ids_answer_like_the_official_video_case():
    """chat(video=frames, temporal_ids=...) on 4.5 uses its recipe (one view, no image ids) and
    gives the official case_video greedy ids."""
    from conftest import REFERENCE, TINY, load_json

    chat = load(TINY["4.5"] / "checkpoint", vision_dtype="float32")
    case = TINY["4.5"] / "case_video"
    expected = load_json(case / "expected.json")
    frames = [Image.open(REFERENCE / f"images/v45_frame{i}_224x160.png") for i in range(5)]
    result = chat.generate(
        [{"role": "user", "content": "Describe the video."}],
        video=frames,
        temporal_ids=expected["chat_kwargs"]["temporal_ids"],
        max_new_tokens=8,
    )
    assert result.prompt_token_ids == expected["input_ids"][0]
    assert result.token_ids == expected["greedy_ids"][0]
    sequential = load(TINY["4.5"] / "checkpoint", vision_dtype="float32", low_memory=True)  # one crop a call
    again = sequential.generate(
        [{"role": "user", "content": "Describe the video."}],
        video=frames,
        temporal_ids=expected["chat_kwargs"]["temporal_ids"],
        max_new_tokens=8,
    )
    assert again.token_ids == result.token_ids
    with pytest.raises(PromptError, match="frames alone"):
        chat.generate([{"role": "user", "content": "?"}], video=frames, image=frames[0], max_new_tokens=1)


def test_4_5_video_file_is_packed_with_time_ids(tmp_path):
    from conftest import TINY

    chat = load(TINY["4.5"] / "checkpoint")
    video = tmp_path / "clip.mp4"
    make_video(video, seconds=2, fps=10)
    result = chat.generate([{"role": "user", "content": "What happens?"}], video=video, max_new_tokens=3)
    assert result.image_tokens == 6 * 64  # 2 s x 3 fps, one group each (short video: no packing)
    assert "<image_id>" not in chat.tokenizer.decode(result.prompt_token_ids)


def test_long_image_encodings_show_a_progress_line(chat26, monkeypatch, capsys):
    """The vision tower reports crops done after each call; past PROGRESS_AFTER seconds the
    encoder prints `encoding images: done/total crops, about N s left` on stderr, then the total."""
    from minicpmv import image_features

    crops = [torch.randn(3, 14, 14 * 6) for _ in range(5)]
    sizes = torch.tensor([[2, 3]] * 5)
    seen = []
    with torch.inference_mode():
        chat26.model.get_image_features(crops, sizes, 2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    monkeypatch.setattr(image_features, "PROGRESS_AFTER", -1.0)
    monkeypatch.setattr(chat26.images, "show_progress", True)
    monkeypatch.setattr(chat26.images, "tuning", {"encode": {"crops_per_call": 2}})
    chat26.images.encode(crops, sizes)
    err = capsys.readouterr().err
    assert "encoding images: 2/5 crops, about" in err and "encoding images: 5/5 crops in" in err
