"""The public Python API: `minicpmv.load(path)` -> a `ChatModel` with `chat()`, `generate()` and
`stream()`. It joins three separate layers: the processor (messages, images, token ids), the
model (tensors) and the generation engine (decoding)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch

from .chat_options import decoding_config
from .compilation import compile_parts
from .devices import check_vision_dtype, pick_device, pick_dtype, pick_vision_autocast, pick_vision_dtype
from .errors import PromptError
from .generation import GenerationConfig, GenerationOutput, generate, stream_tokens
from .hub import resolve_model
from .image_features import ImageEncoder, Residency
from .memory import peak_rss_mib
from .model.checkpoint import LLM_PARTS, VISION_PARTS, OpenCheckpoint
from .model.minicpmv import MiniCPMV
from .processing import MiniCPMVProcessor, ModelInputs
from .processing import video as videos
from .processing.detokenize import IncrementalDecoder
from .tuning import load_tuning, tuned_vision_dtype
from .versions import facts

if TYPE_CHECKING:
    from typing_extensions import Unpack


@dataclass
class Generation:
    """One answer with its token ids and the figures of the timing line."""

    text: str
    token_ids: list[int]  # new tokens only
    prompt_token_ids: list[int]  # the full input after placeholder expansion
    image_tokens: int = 0
    image_seconds: float = 0.0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    load_seconds: float = 0.0
    stopped_by: str = "length"  # "stop" (terminator or stop string), "length", "cancelled"
    compile_seconds: float = 0.0  # torch.compile at load time, when on
    threads: int = 0  # torch's CPU threads when the answer was made
    # with the logprobs option: per new token (logprob, [(id, logprob) alternatives])
    logprobs: list | None = None

    @property
    def first_token_seconds(self) -> float:
        """From the request to the first new token: images encoded and the prompt read."""
        return self.image_seconds + self.prefill_seconds

    def timing_line(self) -> str:
        prefill = len(self.prompt_token_ids) / self.prefill_seconds if self.prefill_seconds else 0.0
        decode = len(self.token_ids) / self.decode_seconds if self.decode_seconds else 0.0
        compiled = f"compile {self.compile_seconds:.1f} s | " if self.compile_seconds else ""
        total = self.load_seconds + self.compile_seconds + self.first_token_seconds + self.decode_seconds
        return (
            f"load {self.load_seconds:.2f} s | {compiled}image encode {self.image_seconds * 1000:.0f} ms "
            f"({self.image_tokens} image tokens) | prefill {len(self.prompt_token_ids)} tok at {prefill:.1f} tok/s | "
            f"decode {len(self.token_ids)} tok at {decode:.1f} tok/s | first token {self.first_token_seconds:.2f} s | "
            f"total {total:.2f} s | {self.threads} thread{'s' * (self.threads != 1)} | peak RSS {peak_rss_mib():.0f} MiB"
        )


@dataclass
class Prepared:
    inputs: ModelInputs
    embeds: torch.Tensor
    config: GenerationConfig
    stop_strings: tuple = ()
    image_seconds: float = 0.0
    image_tokens: list = field(default_factory=list)
    load_seconds: float = 0.0  # low-memory mode: reading model parts in for this request
    prefix: str = ""  # text the prompt already holds that the answer shows (4.5 thinking: "<think>\n")
    constraints: list | None = None  # response_format: one grammar per conversation
    history: list | None = None  # per row, the prompt tokens the repetition penalty counts (4.6/4.7)


class TextStream:
    """Iterator of text deltas of one streamed answer; `cancel()` stops it promptly (also from
    another thread), `result` holds the full Generation once the stream has ended."""

    def __init__(self, chat: ChatModel, prepared: Prepared):
        self.cancel_event = threading.Event()
        self.result: Generation | None = None
        # with the logprobs option: (token, logprob, alternatives) of the tokens behind the last delta
        self.delta_logprobs: list = []
        self.prompt_tokens = int(prepared.inputs.attention_mask[0].sum())  # after image expansion
        self._iterator = chat._stream_text(prepared, self)

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def __next__(self) -> str:
        return next(self._iterator)

    def cancel(self) -> None:
        self.cancel_event.set()

    def text(self) -> str:
        """Consume the rest of the stream and return the whole answer."""
        for _ in self._iterator:
            pass
        return self.result.text


class ChatOptions(TypedDict, total=False):
    """The keyword options of ChatModel.chat / generate / stream / generate_batch, typed."""

    image: object  # an image, or a list: put first into the first user message (official chat(image=))
    video: object  # a video file or a list of frames (the version's recipe: 2.6 frames, 4.5 packed)
    fps: float  # frames sampled per second (2.6: 1, 4.5: 3)
    max_frames: int  # 2.6: most frames; 4.5: most groups before frames are packed
    max_packing: int  # 4.5: most frames per temporal group (1..6, default 3)
    preset: str  # "greedy" (default), "sampling", "precise"
    thinking: bool  # 4.5: think before answering; the answer keeps its <think> block
    temporal_ids: list  # 4.5: the images are video frames in these groups of time ids (0.1 s)
    response_format: (
        dict  # OpenAI's: {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}}
    )
    stop: str | list[str]
    system_prompt: str
    max_slice_nums: int
    use_image_id: bool
    downsample_mode: str  # 4.6/4.7: "16x" or "4x" for this call (default: the model's)
    max_input_length: int
    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    logprobs: int  # keep each token's log-probability and this many alternatives (0..20)
    repetition_penalty: float
    num_beams: int
    seed: int


class ChatModel:
    """A loaded checkpoint: model, processor and tokenizer together."""

    def __init__(
        self,
        model: MiniCPMV,
        processor: MiniCPMVProcessor,
        load_seconds: float = 0.0,
        feature_cache_size: int = 16,
        checkpoint: OpenCheckpoint | None = None,
        vision_autocast: torch.dtype | None = None,
        llm=None,
        llm_parts: tuple = LLM_PARTS,
    ):
        self.model = model
        # what decodes: the model's own LLM, or another backend with its interface (llama.cpp),
        # which needs only `llm_parts` (its token embeddings) of the checkpoint
        self.llm = llm if llm is not None else model.llm
        self.llm_parts = llm_parts
        self.residency = Residency(checkpoint)  # low-memory mode: one half of the model at a time
        self.tuning = load_tuning(model.config)  # best threads per phase from `minicpmv tune`, if any
        self.images = ImageEncoder(model, self.residency, vision_autocast, self.tuning, feature_cache_size)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.version = processor.config.version
        self.load_seconds = load_seconds
        self.compiled: tuple[str, ...] = ()  # parts compiled by `compile()`
        self.compile_seconds = 0.0
        names = [*facts(self.version).terminators, self.tokenizer.special_tokens.get("eos_token")]
        self.stop_ids = frozenset(i for i in (self.tokenizer.token_to_id(n) for n in names if n) if i is not None)

    # ---- public API ------------------------------------------------------------------------

    source: Path | None = None  # the checkpoint folder it was loaded from

    @property
    def description(self) -> str:
        """What the model is, for banners: the bundled demo says that it is one."""
        from .bundled import DEMO_MODEL

        if self.source is not None and self.source.resolve() == DEMO_MODEL.resolve():
            millions = sum(p.numel() for p in self.model.parameters()) / 1e6
            return (
                f"the bundled demo model ({millions:.1f} M parameters in the MiniCPM-V {self.version} layout, "
                "trained here on generated shapes and receipts: it knows only that world; -m for a real model)"
            )
        name = self.source.name if self.source is not None else "a checkpoint"
        return f"MiniCPM-V {self.version} ({name})"

    @property
    def feature_cache_size(self) -> int:
        """Images whose features are kept for reuse (0: none kept, every image encoded anew)."""
        return self.images.cache_size

    @feature_cache_size.setter
    def feature_cache_size(self, size: int) -> None:
        self.images.cache_size = size

    @property
    def vision_autocast(self) -> torch.dtype | None:
        return self.images.vision_autocast

    def chat(self, messages: list, *, stream: bool = False, **options: Unpack[ChatOptions]):
        """The answer text (a list for a batch of conversations), or a TextStream of deltas.

        Options: image, video, fps, max_frames, preset ("greedy" default, "sampling" = the
        official sampling=True, "precise" = the official 3-beam preset), thinking (4.5),
        temporal_ids (4.5 video frame groups), max_new_tokens,
        min_new_tokens, temperature, top_p, top_k, min_p, repetition_penalty, num_beams, seed,
        stop (strings), system_prompt, max_slice_nums, use_image_id, max_input_length.
        """
        if stream:
            return self.stream(messages, **options)
        if messages and isinstance(messages[0], list):
            return [g.text for g in self.generate_batch(messages, **options)]
        return self.generate(messages, **options).text

    def generate(self, messages: list, **options: Unpack[ChatOptions]) -> Generation:
        """One conversation's answer with token ids and timings; options as in `chat`."""
        return self.generate_batch([messages], **options)[0]

    def stream(self, messages: list, **options: Unpack[ChatOptions]) -> TextStream:
        """Stream the answer to one conversation as text deltas (greedy or sampling, not beams)."""
        prepared = self._prepare([messages], **options)
        if prepared.config.num_beams > 1:
            raise PromptError("streaming works with greedy or sampling decoding, not beam search (preset 'precise')")
        return TextStream(self, prepared)

    def prompt_embeddings(self, messages: list, **options: Unpack[ChatOptions]) -> tuple[list[int], torch.Tensor]:
        """(prompt token ids, LLM input embeddings (1, T, D) with the image features written in)."""
        ids, embeds, _ = self.prompt_inputs(messages, **options)
        return ids, embeds

    def prompt_inputs(self, messages: list, **options: Unpack[ChatOptions]):
        """(prompt token ids, input embeddings (1, T, D), position ids): the positions are None
        where they count tokens (the LLM's default), 4.7's canvas positions (3, 1, T) otherwise;
        tokens after the prompt continue from its last position + 1."""
        prepared = self._prepare([messages], **options)
        return prepared.inputs.input_ids[0].tolist(), prepared.embeds, prepared.inputs.position_ids

    def generate_batch(self, conversations: list[list], **options: Unpack[ChatOptions]) -> list[Generation]:
        """Answers to several conversations decoded together, left-padded like the official batch path."""
        prepared = self._prepare(conversations, **options)
        if prepared.config.num_beams == 1 and len(conversations) == 1:
            stream = TextStream(self, prepared)
            stream.text()
            return [stream.result]
        output = generate(
            self.llm,
            prepared.embeds,
            prepared.inputs.attention_mask,
            prepared.config,
            threads=self._phase_threads(),
            constraints=prepared.constraints,
            position_ids=prepared.inputs.position_ids,
            history=prepared.history,
        )
        results = []
        for row, ids in enumerate(output.token_ids):
            decoder = IncrementalDecoder(self.tokenizer, prepared.stop_strings)
            for token in ids:
                decoder.push(token)
            ended = decoder.stopped or len(ids) < prepared.config.max_new_tokens
            results.append(self._result(prepared, row, decoder, output, "stop" if ended else "length"))
        return results

    @property
    def max_batch(self) -> int | None:
        """Most conversations `generate_batch` decodes at once: None = no limit, 1 = llama.cpp's."""
        return getattr(self.llm, "max_batch", None)

    @property
    def independent_streams(self) -> bool:
        """Whether several TextStreams may be stepped in turn: each keeps its own KV cache, and
        no model part is swapped out between them (low-memory mode) or shared (llama.cpp)."""
        return not self.residency.low_memory and self.max_batch is None

    def compile(self, parts=("encode", "decode")) -> float:
        """torch.compile the decode step and/or the vision parts ("encode") and compile them now
        on scratch inputs, so that no request pays for it; returns (and keeps) the seconds spent."""
        with torch.inference_mode():  # as requests run: parts read in then are inference tensors
            self._compile(parts)
        return self.compile_seconds

    def _compile(self, parts) -> None:
        from .compilation import compile_decode, compile_vision, warm_up_decode

        start = time.perf_counter()
        if self.llm is not self.model.llm:
            parts = tuple(p for p in parts if p != "decode")  # another backend decodes: nothing of ours to compile
        if "decode" in parts and "decode" not in self.compiled:
            self.residency.need(self.llm_parts)
            compile_decode(self.model.llm)
            warm_up_decode(self.model.llm)
        if "encode" in parts and "encode" not in self.compiled:
            compile_vision(self.model)
            self.residency.need(VISION_PARTS)
            blank = self.processor([[{"role": "user", "content": [{"image": _blank_image()}, "?"]}]], max_slice_nums=2)
            crops, sizes = blank.pixel_values[0], blank.tgt_sizes[0]
            # the three graphs requests meet: crops of two sizes (padded, with a mask), several
            # crops of one size (no mask), one crop (sizes of 1 get graphs of their own)
            for first in (0, 1, 2):
                self.images.encode(crops[first:], sizes[first:])
        self.compiled = tuple(p for p in ("encode", "decode") if p in parts or p in self.compiled)
        self.compile_seconds += time.perf_counter() - start

    # ---- internals ---------------------------------------------------------------------------

    def _prepare(
        self,
        conversations: list[list],
        *,
        image=None,
        video=None,
        fps: float | None = None,
        max_frames: int | None = None,
        max_packing: int = videos.PACKED_MAX_PACKING,
        preset: str = "greedy",
        thinking: bool = False,
        temporal_ids=None,
        response_format=None,
        stop=None,
        system_prompt=None,
        max_slice_nums=None,
        use_image_id=None,
        max_input_length=None,
        downsample_mode=None,
        **sampling,
    ) -> Prepared:
        config = decoding_config(preset, self.version, thinking, **sampling).with_options(stop_ids=self.stop_ids)
        if video is not None:  # frames without <image_id>, few slices each
            use_image_id = False if use_image_id is None else use_image_id
            image, temporal_ids, slices = self._video(video, image, fps, max_frames, max_packing, temporal_ids)
            max_slice_nums = max_slice_nums or slices
        conversations = [_with_images(conversation, image) for conversation in conversations]
        limit = max_input_length or facts(self.version).max_input_length
        inputs = self.processor.with_downsample_mode(downsample_mode)(
            conversations,
            max_slice_nums=max_slice_nums,
            use_image_id=use_image_id,
            system_prompt=system_prompt,
            max_length=limit,
            temporal_ids=temporal_ids,
            thinking=thinking or None,
        )
        start, swapped = time.perf_counter(), self.residency.swap_seconds
        with torch.inference_mode():
            features = self.images.features(inputs)
            self.residency.need(self.llm_parts)
            embeds = self.model.embed_inputs(inputs.input_ids, features, inputs.image_bound)
        stops = tuple([stop] if isinstance(stop, str) else stop or ())
        tokens = [int((bounds[:, 1] - bounds[:, 0]).sum()) for bounds in inputs.image_bound]
        swap = self.residency.swap_seconds - swapped
        # the official chat() shows the "<think>\n" that ends a thinking prompt as the answer's start
        prefix = "<think>\n" if thinking else ""
        constraints = self._constraints(response_format, len(conversations))
        history = None
        if facts(self.version).penalty_counts_prompt:
            history = [row[mask.bool()].tolist() for row, mask in zip(inputs.input_ids, inputs.attention_mask)]
        return Prepared(
            inputs,
            embeds,
            config,
            stops,
            time.perf_counter() - start - swap,
            tokens,
            swap,
            prefix,
            constraints,
            history,
        )

    def _video(self, video, image, fps, max_frames, max_packing, temporal_ids):
        """(images, temporal_ids, slices per frame) of a video under this version's recipe."""
        if facts(self.version).video_recipe == "packed":
            frames, temporal_ids = _packed_video(video, image, fps, max_frames, max_packing, temporal_ids)
            return frames, temporal_ids, 1
        frames = video if isinstance(video, list) else videos.load_video_frames(
            video, fps or videos.DEFAULT_FPS, max_frames or videos.DEFAULT_MAX_FRAMES
        )  # fmt: skip
        extra = image if isinstance(image, list) else [image] if image is not None else []
        return [*frames, *extra], temporal_ids, videos.VIDEO_MAX_SLICE_NUMS

    def _constraints(self, response_format, count: int) -> list | None:
        if response_format is None or (isinstance(response_format, dict) and response_format.get("type") == "text"):
            return None
        from .generation.structured import response_constraint

        eos = self.tokenizer.token_to_id(facts(self.version).terminators[0])
        vocab = self.model.config.llm.vocab_size
        return [response_constraint(response_format, self.tokenizer, vocab, eos) for _ in range(count)]

    def _phase_threads(self) -> tuple[int, int] | None:
        if not self.tuning:
            return None
        return self.tuning["prefill"]["threads"], self.tuning["decode"]["threads"]

    def _stream_text(self, prepared: Prepared, handle: TextStream) -> Iterator[str]:
        decoder = IncrementalDecoder(self.tokenizer, prepared.stop_strings)
        stats = GenerationOutput([[]])
        steps = stream_tokens(
            self.llm,
            prepared.embeds,
            prepared.inputs.attention_mask,
            prepared.config,
            handle.cancel_event,
            stats,
            self._phase_threads(),
            prepared.constraints,
            prepared.inputs.position_ids,
            prepared.history,
        )
        sent = 0  # tokens whose logprobs went out with a delta

        def logprobs_up_to(count: int) -> list:
            """(token, logprob, alternatives) of the tokens decoded since the last delta."""
            nonlocal sent
            entries = stats.logprobs[0][sent:count] if stats.logprobs else []
            tokens = decoder.ids[sent:count]
            sent = count
            return [(token, lp, alternatives) for token, (lp, alternatives) in zip(tokens, entries)]

        try:
            if prepared.prefix:
                handle.delta_logprobs = []
                yield prepared.prefix
            for step in steps:
                delta = decoder.push(step[0])
                if delta:
                    handle.delta_logprobs = logprobs_up_to(len(decoder.ids))
                    yield delta
                if decoder.stopped:
                    break
            tail = decoder.finish()
            if tail:
                handle.delta_logprobs = logprobs_up_to(len(decoder.ids))
                yield tail
        finally:
            steps.close()
            if decoder.stopped or len(decoder.ids) < prepared.config.max_new_tokens:
                reason = "cancelled" if handle.cancel_event.is_set() and not decoder.stopped else "stop"
            else:
                reason = "length"
            handle.result = self._result(prepared, 0, decoder, stats, reason)

    def _result(
        self, prepared: Prepared, row: int, decoder: IncrementalDecoder, output: GenerationOutput, stopped_by: str
    ) -> Generation:
        inputs = prepared.inputs
        prompt = inputs.input_ids[row][inputs.attention_mask[row].bool()].tolist()
        return Generation(
            prepared.prefix + decoder.text(),
            list(decoder.ids),
            prompt,
            prepared.image_tokens[row],
            prepared.image_seconds,
            output.prefill_seconds,
            output.decode_seconds,
            self.load_seconds + prepared.load_seconds,
            stopped_by,
            self.compile_seconds,
            torch.get_num_threads(),
            output.logprobs[row][: len(decoder.ids)] if output.logprobs is not None else None,
        )


def _packed_video(video, image, fps, max_frames, max_packing, temporal_ids):
    """4.5's recipe: (frames, temporal_ids). A file is sampled and packed as the model card does;
    frames given as a list take `temporal_ids` as given, or `fps` apart, `max_packing` a group."""
    if image is not None:
        raise PromptError("4.5 takes a video's frames alone: every image of the prompt must be a frame")
    fps = fps or videos.PACKED_FPS
    if isinstance(video, list):
        return video, temporal_ids or videos.frame_groups(len(video), fps, max_packing)
    frames, groups = videos.load_packed_video(video, fps, max_frames or videos.PACKED_MAX_FRAMES, max_packing)
    return frames, temporal_ids or groups


def _blank_image():
    from PIL import Image

    return Image.new("RGB", (640, 320), (128, 128, 128))  # 3 crops of 2 sizes: the padded path


def _with_images(messages: list, image) -> list:
    """Like the official chat(image=...): images go first into the first user message."""
    if image is None:
        return messages
    images = [{"image": item} for item in (image if isinstance(image, list) else [image])]  # a str is a path here
    first, *rest = messages
    content = first["content"] if isinstance(first["content"], list) else [first["content"]]
    return [{**first, "content": [*images, *content]}, *rest]


def load(
    path: str | Path,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    low_memory: bool = False,
    vision_dtype: str | None = "auto",
    compile: str | bool = "auto",
    llm_gguf: str | Path | None = None,
    context: int | None = None,
    mmproj: str | Path | None = None,
    downsample_mode: str | None = None,
) -> ChatModel:
    """Load an official MiniCPM-V checkpoint (1.0 ... 4.5) or one of ours.

    Args:
        path: folder with config.json, safetensors weights and tokenizer files; a Hugging Face
            id such as "openbmb/MiniCPM-V-2_6" (from the hub cache, downloaded if absent and
            online; needs the `hub` extra); or "demo", the bundled model.
        dtype: "float32", "bfloat16", "float16" or a torch dtype; default float32 on CPU,
            bfloat16 on CUDA, float16 on MPS.
        device: "cpu", "cuda", "mps"...; default the best available.
        low_memory: the paper's sequential loading: the vision encoder and resampler are read in
            to encode images, then released before the LLM is read in (and the other way round
            when a new image comes), so peak memory is that of the larger part, not the sum.
        vision_dtype: "auto" (for a float32 model on a CPU: bfloat16 autocast for the vision
            parts where bf16 is native, else int8 where the native kernels run, unless `minicpmv
            tune` measured another fastest here; see `devices.pick_vision_dtype`; None: the same
            without the tuning), "float32"/"bfloat16"/"float16", or "int8": the vision tower's
            linears and its attention's two products as int8 x int8 products (quant.dynamic).
        compile: torch.compile the decode step and vision parts: "auto" (default: the parts that
            `minicpmv tune --compile` measured faster on this machine, none if not tuned), "on",
            "off", or "encode" / "decode"; compiled at load, the time is in the timing line.
        llm_gguf: a GGUF of this checkpoint's LLM (`minicpmv export-gguf`): llama.cpp then runs the
            decoder (needs llama-cpp-python), fed with this package's prompt embeddings; the
            checkpoint's LLM layers are never read. One conversation at a time, no beam search.
        context: llama.cpp's KV cache size in tokens (default 8192, capped by the model's).
        mmproj: with `path` a llama.cpp GGUF LLM file, its MiniCPM-V projector GGUF (default: the
            one *mmproj*.gguf beside it); the pair is converted once into a checkpoint folder in
            the cache (backends.gguf_import).
        downsample_mode: 4.6/4.7: "16x" (a crop of 448² gives 64 tokens) or "4x" (256 tokens:
            finer detail, 4x the LLM work); default the checkpoint's config.json.
    """
    compile_parts(compile, None)  # a bad value fails before the model is read
    start = time.perf_counter()
    from .quant.folder import loadable

    path = loadable(resolve_model(path, mmproj=mmproj))
    target = pick_device(device)
    if target.type == "cpu":
        from .memory import reuse_freed_memory

        reuse_freed_memory()
    model_dtype = pick_dtype(dtype, target)
    check_vision_dtype(vision_dtype)  # before the checkpoint is opened
    checkpoint = OpenCheckpoint(path, model_dtype, target)
    tuned = tuned_vision_dtype(checkpoint.config) if vision_dtype == "auto" else None  # only auto reads it
    vision_dtype = pick_vision_dtype(vision_dtype, model_dtype, target, tuned)
    autocast = pick_vision_autocast(vision_dtype, model_dtype)
    if vision_dtype == "int8":  # before the weights are read: the layers keep their float weights
        from .quant.dynamic import use_dynamic_int8

        use_dynamic_int8(checkpoint.model.vpm)
    processor = MiniCPMVProcessor.from_pretrained(path)
    if downsample_mode is not None:  # the processor's token counts and the model's merging agree
        processor = processor.with_downsample_mode(downsample_mode)  # validated: a ConfigError if bad
        checkpoint.config.downsample_mode = downsample_mode
    llm, llm_parts = None, LLM_PARTS
    if llm_gguf is not None:
        from .backends.llamacpp import EMBEDDING_PARTS, LlamaCppLLM

        llm = LlamaCppLLM(llm_gguf, checkpoint.model.llm.embed, checkpoint.config.llm, context)
        llm_parts = EMBEDDING_PARTS
    options = dict(vision_autocast=autocast, llm=llm, llm_parts=llm_parts)
    if low_memory:
        chat = ChatModel(checkpoint.model, processor, time.perf_counter() - start, checkpoint=checkpoint, **options)
    else:
        model = checkpoint.materialize(VISION_PARTS + llm_parts)
        chat = ChatModel(model, processor, time.perf_counter() - start, **options)
    chat.source = Path(path)
    if vision_dtype == "int8":
        # one crop per call: the int8 products' float32 activations stay small enough to keep in
        # cache (4.6 at 1344x1344, 10 crops: 11.6-11.9 s against 15.6-16.2 s for all at once;
        # bf16 autocast shows no difference); `minicpmv tune` still decides where it has run
        chat.images.default_crops_per_call = 1
    parts = compile_parts(compile, chat.tuning)
    if parts:
        chat.compile(parts)
    return chat
