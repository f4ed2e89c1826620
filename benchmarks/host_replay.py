"""The models' outputs recorded once and replayed, so a run does all its host work for real.

:mod:`benchmarks.host_cost` measures what the host spends per chip with the models' device
work out of the way. The seam is the gallery each process caches
(:func:`resflow.inference.caches.load_gallery`): the stages (:mod:`resflow.stages`) call
``gallery.feature_extractor()``, ``hashing_head()`` and ``segmenter(bucket)`` as always and
get models that look up what the real ones returned, so resflow needs no hook. The encoder's
embedding is keyed by a fingerprint of the harmonised window; for its feature maps (seen only
by the decoder) it returns one small tensor holding that key. The head's codes are keyed by
the embedding's bytes, the decoder's logits by the maps' key and the model's name (a window
routed elsewhere fails). :class:`RecordingGallery` records a :class:`Tape` in a real run and
:class:`ReplayGallery` replays it; ``tests/test_host_replay.py`` holds replayed maps equal to
real ones bit for bit. CPU only: on CUDA the stages pad batches with zero maps, which carry
no key.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from resflow.gallery import Gallery

#: Every this-many-th row and column of a harmonised window go into its fingerprint: enough
#: to tell windows apart (a clash with different outputs is refused when recording) for
#: about 22,000 values read per 1280 x 1280 window, whatever its memory layout.
FINGERPRINT_STRIDE = (13, 17)

_LOCAL = threading.local()


@contextmanager
def spent(key: str) -> Iterator[None]:
    """Add the CPU seconds of the block to this thread's ``key`` (see :func:`take_spent`).

    CPU time of the whole process: the measured runs give each worker process one task
    thread, so it is the task's."""
    start = time.process_time()
    try:
        yield
    finally:
        seconds = getattr(_LOCAL, "seconds", None)
        if seconds is None:
            seconds = _LOCAL.seconds = {}
        seconds[key] = seconds.get(key, 0.0) + time.process_time() - start


def take_spent() -> dict[str, float]:
    """This thread's seconds per key since the last call, and start again from zero."""
    seconds = getattr(_LOCAL, "seconds", None) or {}
    _LOCAL.seconds = {}
    return seconds


def fingerprint(image: torch.Tensor, halo: int) -> bytes:
    """16 bytes naming one harmonised window ``(3, S, S)`` and its halo."""
    rows, cols = FINGERPRINT_STRIDE
    sample = image.detach()[:, ::rows, ::cols].numpy().tobytes()
    shape = repr((tuple(image.shape), halo)).encode()
    return hashlib.blake2b(sample + shape, digest_size=16).digest()


def _key_tensor(keys: Sequence[bytes]) -> torch.Tensor:
    """``(N, 2)`` int64: each window's key as the tensor that stands in for its maps."""
    return torch.from_numpy(np.frombuffer(b"".join(keys), dtype=np.int64).reshape(-1, 2).copy())


def _keys_of(tensor: torch.Tensor) -> list[bytes]:
    return [row.tobytes() for row in tensor.numpy()]


class Tape:
    """What the models returned in one real run: embeddings and logits per window key,
    signed codes per embedding. Saved as one ``.npz`` per recording; a folder of them loads
    as one tape (keys are content, so archives never clash)."""

    def __init__(self) -> None:
        self.embeddings: dict[bytes, np.ndarray] = {}
        self.logits: dict[bytes, tuple[str, np.ndarray]] = {}
        self.codes: dict[bytes, np.ndarray] = {}

    def add_window(self, key: bytes, embedding: np.ndarray) -> None:
        """Keep a window's embedding; a second window with the same key must match it."""
        held = self.embeddings.setdefault(key, embedding)
        if not np.array_equal(held, embedding):
            raise ValueError(f"two windows share the fingerprint {key.hex()}: lower "
                             "FINGERPRINT_STRIDE so they can be told apart")

    def add_logits(self, key: bytes, model: str, logits: np.ndarray) -> None:
        """Keep a window's logits and the model that made them; a second window with the
        same key must match them."""
        held = self.logits.setdefault(key, (model, logits))
        if held[0] != model or not np.array_equal(held[1], logits):
            raise ValueError(f"two windows share the fingerprint {key.hex()}: lower "
                             "FINGERPRINT_STRIDE so they can be told apart")

    def save(self, path: Path) -> None:
        """Write the tape to ``path`` (``.npz``, uncompressed: it is read once per process)."""
        arrays = {f"emb_{k.hex()}": v for k, v in self.embeddings.items()}
        arrays |= {f"logits_{k.hex()}": v for k, (_, v) in self.logits.items()}
        models = {k.hex(): name for k, (name, _) in self.logits.items()}
        arrays["models"] = np.array(json.dumps(models))
        rows = list(self.codes)
        # float32 rows, not numpy bytes, which drop trailing zero bytes
        arrays["code_inputs"] = np.stack([np.frombuffer(r, np.float32) for r in rows])
        arrays["code_outputs"] = np.stack([self.codes[r] for r in rows])
        np.savez(path, **arrays)

    @classmethod
    def load(cls, folder: Path) -> Tape:
        """Every ``.npz`` tape in ``folder``, as one."""
        tape = cls()
        for path in sorted(Path(folder).glob("*.npz")):
            with np.load(path) as saved:
                models = json.loads(str(saved["models"]))
                for name in saved.files:
                    kind, _, hexkey = name.partition("_")
                    if kind == "emb":
                        tape.embeddings[bytes.fromhex(hexkey)] = saved[name]
                    elif kind == "logits":
                        tape.logits[bytes.fromhex(hexkey)] = (models[hexkey], saved[name])
                outputs = saved["code_outputs"]
                for row, inputs in enumerate(saved["code_inputs"]):
                    tape.codes[inputs.tobytes()] = outputs[row]
        return tape


class _Recording(nn.Module):
    """A real model whose outputs go on a tape as it runs."""

    def __init__(self, real: nn.Module, tape: Tape, name: str = "") -> None:
        super().__init__()
        self.real, self.tape, self.name = real, tape, name


class RecordingExtractor(_Recording):
    def encode(self, x: torch.Tensor, halo: int = 0
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The real maps with each window's key appended, and the real embedding."""
        levels, embedding = self.real.encode(x, halo)
        keys = [fingerprint(image, halo) for image in x]
        for key, row in zip(keys, embedding.numpy(), strict=True):
            self.tape.add_window(key, row.copy())
        return [*levels, _key_tensor(keys)], embedding


class RecordingHead(_Recording):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        signed = self.real(x)
        for row, out in zip(x.numpy(), signed.numpy(), strict=True):
            self.tape.codes[row.tobytes()] = out.copy()
        return signed


class RecordingSegmenter(_Recording):
    def decode(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """The real logits from the real maps, kept under the window's key."""
        logits = self.real.decode(list(maps[:-1]), size)
        for key, row in zip(_keys_of(maps[-1]), logits.numpy(), strict=True):
            self.tape.add_logits(key, self.name, row[0].copy())
        return logits


class _Replay(nn.Module):
    """A model that returns what the tape holds; its lookups are timed under ``key``."""

    def __init__(self, tape: Tape, key: str, name: str = "") -> None:
        super().__init__()
        self.tape, self.key, self.name = tape, key, name
        self.bits = len(next(iter(tape.codes.values()))) if tape.codes else 0
        # map_codes finds the head's device from its parameters
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)


class ReplayMissing(KeyError):
    """The tape has no output for what a replayed model was given: record this archive."""


class ReplayExtractor(_Replay):
    def encode(self, x: torch.Tensor, halo: int = 0
               ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The recorded embedding of each window, and its key in place of its maps."""
        with spent(self.key):
            keys = [fingerprint(image, halo) for image in x]
            missing = [k.hex() for k in keys if k not in self.tape.embeddings]
            if missing:
                raise ReplayMissing(f"no recorded window {missing[0]} on the tape")
            embedding = torch.from_numpy(np.stack([self.tape.embeddings[k] for k in keys]))
            return [_key_tensor(keys)], embedding

    def forward(self, x: torch.Tensor, halo: int = 0) -> torch.Tensor:
        return self.encode(x, halo)[1]


class ReplayHead(_Replay):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Recorded codes of each embedding; zeros for the padding rows nobody reads."""
        with spent(self.key):
            rows = x.numpy()
            out = np.zeros((len(rows), self.bits), np.float32)
            for i, row in enumerate(rows):
                if row.any():
                    code = self.tape.codes.get(row.tobytes())
                    if code is None:
                        raise ReplayMissing("no recorded codes for an embedding")
                    out[i] = code
            return torch.from_numpy(out)


class ReplaySegmenter(_Replay):
    def decode(self, maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """Recorded logits ``(N, 1, *size)`` of the windows whose keys ``maps`` carry."""
        with spent(self.key):
            rows = []
            for key in _keys_of(maps[-1]):
                if key not in self.tape.logits:
                    raise ReplayMissing(f"no recorded logits for window {key.hex()}")
                name, logits = self.tape.logits[key]
                if name != self.name or logits.shape != tuple(size):
                    raise ReplayMissing(f"window {key.hex()} was decoded by {name} at "
                                        f"{logits.shape}, not by {self.name} at {size}")
                rows.append(logits)
            return torch.from_numpy(np.stack(rows)[:, None])


class _SubstituteGallery(Gallery):
    """A gallery (path, manifest, bucket codes of a real one) whose models are stand-ins."""

    def __init__(self, real: Gallery) -> None:
        super().__init__(real.path, real.manifest)
        self._stand_ins: dict[str, nn.Module] = {}

    def _stand_in(self, name: str, bucket: int | None) -> nn.Module:
        """The stand-in for model ``name`` (``bucket``'s segmenter, or None)."""
        raise NotImplementedError

    def _held(self, name: str, bucket: int | None = None) -> nn.Module:
        if name not in self._stand_ins:
            self._stand_ins[name] = self._stand_in(name, bucket).eval()
        return self._stand_ins[name]

    def feature_extractor(self) -> nn.Module:
        return self._held(":extractor")

    def hashing_head(self) -> nn.Module:
        return self._held(":head")

    def segmenter(self, bucket: int) -> nn.Module:
        return self._held(self.model_name(bucket), bucket)

    def mono(self) -> nn.Module:
        return self._held("mono")


class RecordingGallery(_SubstituteGallery):
    """The real gallery's models, each keeping its outputs on :attr:`tape`."""

    def __init__(self, real: Gallery, tape: Tape) -> None:
        super().__init__(real)
        self.real, self.tape = real, tape

    def _stand_in(self, name: str, bucket: int | None) -> nn.Module:
        if name == ":extractor":
            return RecordingExtractor(self.real.feature_extractor(), self.tape)
        if name == ":head":
            return RecordingHead(self.real.hashing_head(), self.tape)
        real = self.real.mono() if bucket is None else self.real.segmenter(bucket)
        return RecordingSegmenter(real, self.tape, name)


#: The sub-timer key of each replayed model's lookups, taken off its stage's clock.
REPLAY_KEYS = {":extractor": "replay-stage1", ":head": "replay-stage2"}
REPLAY_DECODE = "replay-stage3"


class ReplayGallery(_SubstituteGallery):
    """Models that return what :attr:`tape` recorded."""

    def __init__(self, real: Gallery, tape: Tape) -> None:
        super().__init__(real)
        self.tape = tape

    def _stand_in(self, name: str, bucket: int | None) -> nn.Module:
        if name in REPLAY_KEYS:
            model = ReplayExtractor if name == ":extractor" else ReplayHead
            return model(self.tape, REPLAY_KEYS[name])
        return ReplaySegmenter(self.tape, REPLAY_DECODE, name)
