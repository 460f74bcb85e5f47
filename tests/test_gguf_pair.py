"""llama.cpp's file pair: `export-gguf --mmproj` writes the LLM (with its real tokenizer) and the
vision projector in llama.cpp's MiniCPM-V layout; llama.cpp's own multimodal path (libmtmd through
llama-cpp-python's MiniCPMv26ChatHandler) runs the pair with our image features and our greedy
tokens; and `-m model.gguf --mmproj mmproj.gguf` loads a pair back with the same logits."""

import ctypes
import json

import numpy as np
import pytest
import torch
from conftest import REFERENCE, TINY
from PIL import Image

from minicpmv import load
from minicpmv.cli import main
from minicpmv.errors import ConfigError

gguf = pytest.importorskip("gguf")
llama_cpp = pytest.importorskip("llama_cpp")

from minicpmv.backends.gguf_export import export_gguf  # noqa: E402
from minicpmv.backends.gguf_tokenizer import tokenizer_files  # noqa: E402
from minicpmv.backends.mmproj import checkpoint_tensors, export_mmproj, projector_tensors  # noqa: E402
from minicpmv.model.config import MiniCPMVConfig  # noqa: E402

QUESTION = "What is in the picture?"
VERSIONS = ("2.5", "2.6", "4.5")


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs")
    result = {}
    for version in VERSIONS:
        checkpoint = TINY[version] / "checkpoint"
        for kind in ("f32", "q8_0"):
            llm = export_gguf(checkpoint, folder / f"{version}-{kind}.gguf", kind)
            mmproj = export_mmproj(
                checkpoint, folder / f"{version}-{kind}-mmproj.gguf", "f32" if kind == "f32" else "f16"
            )
            result[version, kind] = (llm, mmproj)
    return result


@pytest.fixture(scope="module")
def square_image(tmp_path_factory):
    """One unsliced 448x448 view: llama.cpp resizes with its own bicubic, which a view of exactly
    the slice size never reaches, so both sides see the same pixels."""
    path = tmp_path_factory.mktemp("image") / "square.png"
    Image.open(REFERENCE / "images" / "img_b_640x448.png").convert("RGB").resize((448, 448)).save(path)
    return path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICPMV_CACHE_DIR", str(tmp_path / "cache"))


def _vision_state(version):
    from safetensors.numpy import load_file

    state = load_file(TINY[version] / "checkpoint" / "model.safetensors")
    return {k: v for k, v in state.items() if k.startswith(("vpm.", "resampler."))}


@pytest.mark.parametrize("version", VERSIONS)
def test_projector_layout_round_trips(version):
    """The projector layout: the resampler's fused q/k/v split, its projection transposed, the
    70x70 key table added; reading it back gives every tensor of the checkpoint unchanged."""
    state = _vision_state(version)
    config = MiniCPMVConfig.from_pretrained(TINY[version] / "checkpoint")
    written = dict(projector_tensors(state.items(), config))
    assert {"resampler.attn.q.weight", "resampler.attn.v.bias", "resampler.proj.weight"} <= set(written)
    assert written["resampler.pos_embed_k"].shape == (70 * 70, config.llm.hidden_size)
    np.testing.assert_array_equal(written["resampler.proj.weight"], state["resampler.proj"].T)
    back = dict(checkpoint_tensors(written.items(), config.vision.hidden_size))
    assert set(back) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


def test_feed_forward_names_are_read_either_way_round():
    """llama.cpp's converter writes fc1 as ffn_down (its loader swaps by shape); a file named the
    other way round must load the same."""
    state = _vision_state("2.6")
    config = MiniCPMVConfig.from_pretrained(TINY["2.6"] / "checkpoint")
    written = dict(projector_tensors(state.items(), config))
    swap = {"ffn_down": "ffn_up", "ffn_up": "ffn_down"}
    renamed = {}
    for name, value in written.items():
        parts = name.split(".")
        if len(parts) > 3 and parts[3] in swap:
            parts[3] = swap[parts[3]]
        renamed[".".join(parts)] = value
    fc1 = state["vpm.encoder.layers.0.mlp.fc1.weight"]
    assert written["v.blk.0.ffn_down.weight"] is fc1 and renamed["v.blk.0.ffn_up.weight"] is fc1
    back = dict(checkpoint_tensors(renamed.items(), config.vision.hidden_size))
    for name, value in state.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)


@pytest.mark.parametrize("version", VERSIONS)
def test_gguf_vocabulary_rebuilds_the_tokenizer(pairs, version):
    """The GGUF's tokens, merges, pre-tokenizer and special ids make a tokenizer that encodes like
    the checkpoint's own (Llama-3's begin-of-text included)."""
    from tokenizers import Tokenizer

    original = Tokenizer.from_file(str(TINY[version] / "checkpoint" / "tokenizer.json"))
    content, config = tokenizer_files(gguf.GGUFReader(str(pairs[version, "f32"][0])))
    rebuilt = Tokenizer.from_str(json.dumps(content))
    texts = [
        "<|im_start|>user\nWhat's in the 12345 picture?<|im_end|>\n",
        "  spaces\t\ttabs\n\nnewlines  ",
        "café naïve 東京 ✓ émoji 🙂",
        "<image><unk></image><slice>x</slice>",
    ]
    for text in texts:
        assert rebuilt.encode(text).ids == original.encode(text).ids, text
    ids = original.encode(texts[2]).ids
    assert rebuilt.decode(ids) == original.decode(ids)
    own = json.loads((TINY[version] / "checkpoint" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == own["eos_token"]


def _mtmd_features(handler, image_bytes: bytes, width: int) -> np.ndarray:
    """llama.cpp's image embeddings of one picture, through libmtmd's own encode call."""
    mtmd = handler._mtmd_cpp
    bitmap = handler._create_bitmap_from_bytes(image_bytes)
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        text = mtmd.mtmd_input_text()
        marker = mtmd.mtmd_default_marker()
        text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
        bitmaps = (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap)
        assert mtmd.mtmd_tokenize(handler.mtmd_ctx, chunks, ctypes.byref(text), bitmaps, 1) == 0
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
                count = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
                assert mtmd.mtmd_encode_chunk(handler.mtmd_ctx, chunk) == 0
                pointer = mtmd.mtmd_get_output_embd(handler.mtmd_ctx)
                return np.ctypeslib.as_array(pointer, shape=(count * width,)).reshape(count, width).copy()
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)
    raise AssertionError("libmtmd made no image chunk")


def _llama_cpp_run(llm, mmproj, image, new_tokens: int, width: int):
    """(answer, prompt length, evaluated token ids, image features) from llama-cpp-python's
    MiniCPM-V chat handler: greedy, no repetition penalty."""
    import base64

    from llama_cpp.llama_chat_format import MiniCPMv26ChatHandler

    handler = MiniCPMv26ChatHandler(clip_model_path=str(mmproj), verbose=False)
    model = llama_cpp.Llama(str(llm), chat_handler=handler, n_ctx=1024, n_threads=2, verbose=False)
    try:
        url = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
        # the handler writes the image, then the text: "\n" first gives the official image line
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "\n" + QUESTION}]
        result = model.create_chat_completion(
            messages=[{"role": "user", "content": content}], temperature=0, repeat_penalty=1.0, max_tokens=new_tokens
        )
        evaluated = model.input_ids[: model.n_tokens].tolist()  # the last sampled token is never evaluated
        features = _mtmd_features(handler, image.read_bytes(), width)
        return result["choices"][0]["message"]["content"], result["usage"]["prompt_tokens"], evaluated, features
    finally:
        model.close()


def test_llama_cpp_multimodal_path_answers_like_our_model(pairs, square_image):
    """2.6 through the handler made for it: same prompt tokens, same greedy answer."""
    llm, mmproj = pairs["2.6", "f32"]
    chat = load(TINY["2.6"] / "checkpoint", vision_dtype="float32")  # llama.cpp's tower runs in float32
    text, prompt, evaluated, _ = _llama_cpp_run(llm, mmproj, square_image, 12, chat.model.config.llm.hidden_size)
    # without image ids our prompt is llama.cpp's: system, "<image>...</image>", "\n" and the question
    messages = [{"role": "user", "content": [Image.open(square_image), QUESTION]}]
    answer = chat.generate(messages, use_image_id=False, max_new_tokens=12, repetition_penalty=1.0)
    ours = answer.prompt_token_ids
    assert prompt == len(ours)
    unk = chat.processor.tokenizer.token_to_id("<unk>")  # image positions hold embeddings in llama.cpp
    assert [t for t, o in zip(evaluated, ours) if o != unk] == [o for o in ours if o != unk]
    generated = evaluated[prompt:]
    assert generated == answer.token_ids[: len(generated)] and len(generated) >= 11
    assert text == answer.text.replace("\ufffd", "")  # llama-cpp-python drops broken UTF-8 where we mark it


@pytest.mark.parametrize("version", VERSIONS)
def test_llama_cpp_encodes_images_like_our_model(pairs, square_image, version):
    """libmtmd's tower and resampler on our projector file give our image features. 2.5 quirk:
    the official 2.5 code positions patches by 1-D buckets of the padded length (its patch mask
    is all True, see model/vision.py); llama.cpp uses the 2-D buckets of 2.6, so 2.5 is compared
    with that quirk switched off: the file is right, llama.cpp's 2.5 is not the official one."""
    llm, mmproj = pairs[version, "f32"]
    chat = load(TINY[version] / "checkpoint", vision_dtype="float32")
    chat.model.config.vision.faithful_idefics2_mask = False
    features = _llama_cpp_run(llm, mmproj, square_image, 1, chat.model.config.llm.hidden_size)[3]
    messages = [{"role": "user", "content": [Image.open(square_image), QUESTION]}]
    ids, embeds = chat.prompt_embeddings(messages, use_image_id=False)
    start = ids.index(chat.processor.tokenizer.token_to_id("<image>")) + 1
    ours = embeds[0, start : start + chat.model.config.query_num].numpy()
    assert features.shape == ours.shape
    np.testing.assert_allclose(features, ours, atol=2e-4 * np.abs(ours).max())  # ggml's float32 GELU, sin/cos


@pytest.mark.parametrize("version", VERSIONS)
def test_gguf_pair_loads_back_with_the_same_logits(pairs, version):
    image = Image.open(REFERENCE / "images" / "img_b_640x448.png")  # sliced: every crop path
    messages = [{"role": "user", "content": [image, QUESTION]}]
    ours = load(TINY[version] / "checkpoint")
    back = load(pairs[version, "f32"][0], mmproj=pairs[version, "f32"][1])
    ids, embeds = ours.prompt_embeddings(messages)
    back_ids, back_embeds = back.prompt_embeddings(messages)
    assert back_ids == ids and torch.equal(back_embeds, embeds)
    with torch.inference_mode():
        assert torch.equal(back.model.llm(back_embeds)[0], ours.model.llm(embeds)[0])
    assert back.generate(messages, max_new_tokens=8).token_ids == ours.generate(messages, max_new_tokens=8).token_ids


def test_quantized_pair_loads_close_to_the_float_model(pairs):
    messages = [{"role": "user", "content": [Image.open(REFERENCE / "images" / "img_b_640x448.png"), QUESTION]}]
    ours = load(TINY["2.6"] / "checkpoint")
    back = load(pairs["2.6", "q8_0"][0], mmproj=pairs["2.6", "q8_0"][1])
    _, embeds = ours.prompt_embeddings(messages)
    _, back_embeds = back.prompt_embeddings(messages)
    with torch.inference_mode():
        reference, logits = ours.model.llm(embeds)[0], back.model.llm(back_embeds)[0]
    assert 0 < (logits - reference).abs().max() < 0.05 * reference.abs().max()


def test_cli_runs_a_pair_and_finds_the_projector_beside_it(pairs, tmp_path, capsys):
    llm, mmproj = pairs["2.6", "f32"]
    image = str(REFERENCE / "images" / "img_b_640x448.png")
    argv = ["generate", "--image", image, "-p", QUESTION, "-n", "6", "--json"]
    assert main([*argv, "-m", str(llm), "--mmproj", str(mmproj)]) == 0
    named = json.loads(capsys.readouterr().out)
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "model.gguf").write_bytes(llm.read_bytes())
    assert main([*argv, "-m", str(alone / "model.gguf")]) == 2
    assert "needs its vision projector: --mmproj FILE" in capsys.readouterr().err
    (alone / "mmproj-model-f32.gguf").write_bytes(mmproj.read_bytes())
    assert main([*argv, "-m", str(alone / "model.gguf")]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == named["token_ids"]


def test_mismatched_or_wrong_files_are_refused(pairs, tmp_path):
    with pytest.raises(ConfigError, match="a llama LLM, but MiniCPM-V 2.6's LLM is qwen2"):
        load(pairs["2.5", "f32"][0], mmproj=pairs["2.6", "f32"][1])
    with pytest.raises(ConfigError, match="no such GGUF file"):
        load(tmp_path / "missing.gguf", mmproj=pairs["2.6", "f32"][1])
    with pytest.raises(ConfigError, match="no such projector GGUF file"):
        load(pairs["2.6", "f32"][0], mmproj=tmp_path / "missing.gguf")
    with pytest.raises(ConfigError, match="not a MiniCPM-V projector"):
        load(pairs["2.6", "f32"][0], mmproj=pairs["2.6", "f32"][0])
    with pytest.raises(ConfigError, match="a projector goes with a GGUF model file"):
        load(TINY["2.6"] / "checkpoint", mmproj=pairs["2.6", "f32"][1])
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF not really")
    with pytest.raises(ConfigError, match="not a readable GGUF file"):
        load(broken, mmproj=pairs["2.6", "f32"][1])


def test_export_cli_writes_the_pair_and_refuses_to_overwrite(tmp_path, capsys):
    llm, mmproj = tmp_path / "m.gguf", tmp_path / "mmproj.gguf"
    argv = ["export-gguf", "-m", str(TINY["2.6"] / "checkpoint"), "-o", str(llm), "--mmproj", str(mmproj)]
    assert main([*argv, "--type", "q8_0"]) == 0
    reader = gguf.GGUFReader(str(mmproj))
    assert reader.fields["clip.projector_type"].contents() == "resampler"
    assert reader.fields["clip.minicpmv_version"].contents() == 3  # llama.cpp's number for 2.6
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["v.blk.0.attn_q.weight"] == "F16" and kinds["v.blk.0.attn_q.bias"] == "F32"
    assert main(argv) == 2 and "file exists" in capsys.readouterr().err
    assert main(["export-gguf", "-m", str(TINY["2.0"] / "checkpoint"), "-o", str(tmp_path / "x.gguf")]) == 2


def test_a_file_quantized_by_llama_cpp_reads_as_llama_cpp_reads_it(pairs, tmp_path):
    """K-quants as distributed (Q4_K_M: Q4_K, Q6_K and Q5_0 blocks, written by llama.cpp's own
    quantizer) dequantize to what llama.cpp computes with: our logits on the converted weights sit
    far closer to llama.cpp's on the file than either is to the float model's (what is left is
    llama.cpp's 8-bit activations and float16 keys)."""
    llm, mmproj = pairs["2.6", "f32"]
    quantized = tmp_path / "model-q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M, 2
    assert llama_cpp.llama_model_quantize(str(llm).encode(), str(quantized).encode(), ctypes.byref(params)) == 0
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(str(quantized)).tensors}
    assert {"Q4_K", "Q6_K"} <= kinds
    messages = [{"role": "user", "content": [Image.open(REFERENCE / "images" / "img_b_640x448.png"), QUESTION]}]
    float_model = load(TINY["2.6"] / "checkpoint")
    _, embeds = float_model.prompt_embeddings(messages)
    converted = load(quantized, mmproj=mmproj)
    in_llama_cpp = load(TINY["2.6"] / "checkpoint", llm_gguf=quantized)
    with torch.inference_mode():
        reference = float_model.model.llm(embeds)[0]
        ours = converted.model.llm(embeds)[0]
        theirs = in_llama_cpp.llm(embeds, cache=in_llama_cpp.llm.new_cache(1, embeds.shape[1]))[0]
    quantization_error = (theirs - reference).abs().max()
    assert quantization_error > 0.02 * reference.abs().max()  # the file is really quantized
    assert (ours - theirs).abs().max() < 0.4 * quantization_error


def test_every_subcommand_takes_a_gguf_file_with_its_projector_beside_it(pairs, tmp_path, capsys):
    """-m model.gguf is a checkpoint everywhere (quantize to our int4, info), the projector found
    beside it."""
    folder = tmp_path / "pair"
    folder.mkdir()
    for source, name in zip(pairs["2.6", "f32"], ("model-f32.gguf", "mmproj-model-f32.gguf")):
        (folder / name).write_bytes(source.read_bytes())
    assert main(["info", "-m", str(folder / "model-f32.gguf")]) == 0
    assert "2.6" in capsys.readouterr().out
    out = tmp_path / "int4"
    assert main(["quantize", "-m", str(folder / "model-f32.gguf"), "-o", str(out), "--bits", "4"]) == 0
    image = str(REFERENCE / "images" / "img_b_640x448.png")
    assert main(["generate", "-m", str(out), "--image", image, "-p", QUESTION, "-n", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[-1])["token_ids"]) == 4
