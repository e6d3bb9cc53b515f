"""Keyword spotting on spoken words synthesised offline: log-mel features and the espeak-ng data set.

torchaudio has no release for torch 2.14.1, so the audio pieces are written here on plain torch:

- :func:`log_mel`: log-mel spectrogram with ``torch.stft`` and an HTK mel filterbank.
- :func:`read_wav` / :func:`resample`: WAV bytes (stdlib ``wave``) to float samples, and
  band-limited resampling by windowed-sinc interpolation (espeak-ng speaks at 22050 Hz, the
  features use 16 kHz like Google Speech Commands).
- :func:`keyword_tensors`: the ``"keywords-synth"`` data set. Each keyword (and filler word of the
  ``_unknown_`` class) is spoken by Debian's ``espeak-ng`` with voice variants (the speakers),
  accents, speeds and pitches drawn from a seeded grid; each clip is trimmed, shifted at random
  inside a 1 s window and mixed with noise at a random SNR. A ``_silence_`` class holds noise
  alone. Test speakers (voice variants) never occur in the training split, so the test accuracy
  measures generalisation to new voices. The features are computed once per machine and cached
  as safetensors under ``cache_root()/data/keywords-synth-<hash of the settings>``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import shutil
import subprocess
import sys
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.data._datasets import DatasetNotFoundError

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
# The other words of Google Speech Commands v1: spoken as the `_unknown_` class.
FILLERS = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
)  # fmt: skip
UNKNOWN, SILENCE = "_unknown_", "_silence_"
LABELS = (*KEYWORDS, UNKNOWN, SILENCE)
# espeak-ng voice variants (files under espeak-ng-data/voices/!v): one variant = one speaker.
VOICES = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt6", "Alex", "adam", "anika", "aunty",
    "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward", "iven", "john", "linda",
    "max", "michel", "norbert", "paul", "pedro", "robert", "steph", "rob",
)  # fmt: skip
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc")
ESPEAK_RATE = 22050  # espeak-ng's output sample rate
_FORMAT = 1  # bump when the synthesis or feature code changes what is cached


# --------------------------------------------------------------------------------------------
# Features


def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale: ``2595 * log10(1 + hz / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor | float) -> torch.Tensor:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (torch.as_tensor(mel, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 20.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular filters ``[n_mels, n_fft // 2 + 1]`` evenly spaced on the HTK mel scale.

    Filter ``m`` rises linearly from centre ``m - 1`` to 1 at its centre ``m`` and falls to 0 at
    centre ``m + 1`` (the ``n_mels + 2`` centres span ``f_min..f_max`` in mel). Peaks are 1 (no
    area normalisation), so between the first and the last centre the filters sum to 1.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(
            f"need 0 <= f_min < f_max <= sample_rate / 2, got f_min={f_min}, f_max={f_max}, "
            f"sample_rate={sample_rate}"
        )
    if n_mels < 1 or n_fft < 2:
        raise ValueError(f"n_mels must be >= 1 and n_fft >= 2, got {n_mels} and {n_fft}")
    centres = mel_to_hz(torch.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    lo, mid, hi = centres[:-2, None], centres[1:-1, None], centres[2:, None]
    rising = (freqs - lo) / (mid - lo)
    falling = (hi - freqs) / (hi - mid)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


def log_mel(
    waveform: torch.Tensor,
    sample_rate: int = 16000,
    n_fft: int = 400,
    hop: int = 160,
    n_mels: int = 40,
    f_min: float = 20.0,
    f_max: float | None = None,
) -> torch.Tensor:
    """Log-mel spectrogram ``[N, n_mels, frames]`` of ``[N, S]`` (or ``[n_mels, frames]`` of ``[S]``).

    Power spectrum of ``torch.stft`` (Hann window of ``n_fft`` samples, 25 ms at 16 kHz; hop 10 ms;
    centred frames with reflect padding, so ``frames = 1 + S // hop``), through
    :func:`mel_filterbank`, then ``log(mel + 1e-6)``. Samples are expected in [-1, 1].

    >>> log_mel(torch.zeros(2, 16000)).shape
    torch.Size([2, 40, 101])
    """
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be [S] or [N, S], got shape {tuple(waveform.shape)}")
    if waveform.shape[-1] <= n_fft // 2:
        raise ValueError(f"waveform of {waveform.shape[-1]} samples is too short for n_fft={n_fft}")
    x = waveform.float()
    spec = torch.stft(
        x,
        n_fft,
        hop_length=hop,
        window=torch.hann_window(n_fft, device=x.device),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )  # [N, n_fft // 2 + 1, frames]
    power = spec.real.square() + spec.imag.square()
    fb = mel_filterbank(n_mels, n_fft, sample_rate, f_min, f_max).to(x.device)
    return torch.log(torch.matmul(fb, power) + 1e-6)


# --------------------------------------------------------------------------------------------
# WAV and resampling


def read_wav(data: bytes) -> tuple[torch.Tensor, int]:
    """``(samples [S] float32 in [-1, 1], sample_rate)`` from WAV bytes (PCM 8/16/32-bit).

    Channels are averaged. A stream whose header gives a placeholder length (``espeak-ng
    --stdout`` writes 0x7fffffff because it cannot seek) is read to its end.
    """
    try:
        with wave.open(io.BytesIO(data)) as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a PCM WAV stream: {exc}") from exc
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if dtype is None:
        raise ValueError(f"unsupported WAV sample width {width} bytes (use 8, 16 or 32-bit PCM)")
    usable = len(frames) - len(frames) % (width * channels)
    samples = np.frombuffer(frames[:usable], dtype=dtype).astype(np.float32)
    if width == 1:
        samples = (samples - 128.0) / 128.0  # 8-bit WAV is unsigned
    else:
        samples /= float(2 ** (8 * width - 1))
    samples = samples.reshape(-1, channels).mean(axis=1)
    return torch.from_numpy(np.ascontiguousarray(samples)), rate


def resample(
    waveform: torch.Tensor,
    orig_rate: int,
    new_rate: int,
    *,
    zero_crossings: int = 16,
    rolloff: float = 0.95,
) -> torch.Tensor:
    """Resample ``[..., S]`` from ``orig_rate`` to ``new_rate`` Hz (``S * new // orig`` samples).

    Band-limited interpolation: each output sample at input time ``t = k * orig / new`` is the
    sum of the input samples around ``t`` weighted by a Hann-windowed sinc whose cutoff is
    ``rolloff`` times the lower of the two Nyquist frequencies (so downsampling removes what
    would alias) and which spans ``zero_crossings`` zero crossings on each side. Samples outside
    the signal count as zeros.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} and {new_rate}")
    if orig_rate == new_rate:
        return waveform.clone()
    n_out = waveform.shape[-1] * new_rate // orig_rate
    kernel, stride, reach = _polyphase_kernel(orig_rate, new_rate, zero_crossings, rolloff)
    phases, width = kernel.shape
    # Output k = q * phases + p sits at input time q * stride + p * stride / phases: one strided
    # conv1d with a kernel row per phase p, then interleave the phases.
    blocks = -(-n_out // phases)  # ceil
    flat = waveform.reshape(-1, 1, waveform.shape[-1])
    right = (blocks - 1) * stride + width - (reach - 1) - waveform.shape[-1]
    padded = torch.nn.functional.pad(flat, (reach - 1, max(right, 0)))
    out = torch.nn.functional.conv1d(padded, kernel.to(waveform.dtype)[:, None], stride=stride)
    out = out[..., :blocks].transpose(1, 2).reshape(flat.shape[0], -1)[:, :n_out]
    return out.reshape(*waveform.shape[:-1], n_out)


@functools.lru_cache(maxsize=8)
def _polyphase_kernel(
    orig_rate: int, new_rate: int, zero_crossings: int, rolloff: float
) -> tuple[torch.Tensor, int, int]:
    """``(kernel [phases, width], stride, reach)`` for a rate ratio reduced to phases/stride."""
    g = math.gcd(orig_rate, new_rate)
    phases, stride = new_rate // g, orig_rate // g
    if phases * stride > 1_000_000:
        raise ValueError(
            f"resampling {orig_rate} -> {new_rate} Hz needs {phases} filter phases; resample "
            "through a rate with a simpler ratio (e.g. 48000 or 16000 Hz)"
        )
    cutoff = 0.5 * min(1.0, new_rate / orig_rate) * rolloff  # cycles per input sample
    span = zero_crossings / (2 * cutoff)  # kernel half-width in input samples
    reach = math.ceil(span)
    t = torch.arange(phases, dtype=torch.float64)[:, None] * (stride / phases)  # [phases, 1]
    offsets = torch.arange(-reach + 1, stride + reach, dtype=torch.float64)  # input positions
    d = t - offsets  # [phases, width]
    window = torch.where(d.abs() < span, 0.5 * (1 + torch.cos(math.pi * d / span)), 0.0)
    kernel = 2 * cutoff * torch.sinc(2 * cutoff * d) * window
    return kernel.float(), stride, reach


# --------------------------------------------------------------------------------------------
# Synthesis with espeak-ng


def espeak_path() -> str:
    """The ``espeak-ng`` executable, or a DatasetNotFoundError naming the Debian package."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise DatasetNotFoundError(
            "the keywords-synth data set is spoken by espeak-ng, which is not installed: "
            "apt-get install espeak-ng (Debian/Ubuntu package espeak-ng)"
        )
    return path


def espeak_version() -> str:
    """``espeak-ng --version`` (part of the cache key: another version speaks differently)."""
    out = subprocess.run([espeak_path(), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def synthesize(
    word: str, voice: str = "en", *, speed: int = 160, pitch: int = 50, sample_rate: int = 16000
) -> torch.Tensor:
    """``[S]`` float samples of ``word`` spoken by espeak-ng at ``sample_rate``.

    ``voice`` is an espeak-ng voice, optionally with a variant (``"en-us+f3"``); ``speed`` in
    words per minute, ``pitch`` 0..99. Runs ``espeak-ng -v VOICE -s SPEED -p PITCH --stdout
    WORD`` (no shell) and resamples its 22050 Hz output with :func:`resample`.
    """
    cmd = [espeak_path(), "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", word]
    out = subprocess.run(cmd, capture_output=True, check=False)
    if out.returncode != 0 or not out.stdout:
        msg = out.stderr.decode(errors="replace").strip() or f"exit code {out.returncode}"
        raise ValueError(f"espeak-ng failed for voice {voice!r}, word {word!r}: {msg}")
    samples, rate = read_wav(out.stdout)
    return resample(samples, rate, sample_rate)


def trim_silence(clip: torch.Tensor, threshold: float = 0.02, margin: int = 160) -> torch.Tensor:
    """Cut leading and trailing samples quieter than ``threshold`` x the peak (keep a margin)."""
    loud = torch.nonzero(clip.abs() > threshold * clip.abs().max().clamp_min(1e-9)).flatten()
    if len(loud) == 0:
        return clip
    return clip[max(0, int(loud[0]) - margin) : int(loud[-1]) + 1 + margin]


def _noise(n: int, g: torch.Generator) -> torch.Tensor:
    """White or brown (integrated white) noise of unit RMS, chosen at random."""
    white = torch.randn(n, generator=g)
    if torch.rand((), generator=g) < 0.5:
        return white
    brown = torch.cumsum(white, 0)
    brown = brown - torch.linspace(float(brown[0]), float(brown[-1]), n)  # remove the drift
    return brown / brown.square().mean().sqrt().clamp_min(1e-9)


def augment(
    clip: torch.Tensor | None, length: int, snr_db: tuple[float, float], g: torch.Generator
) -> torch.Tensor:
    """Place ``clip`` at a random offset in ``length`` samples and add noise at a random SNR.

    The SNR (dB, uniform in ``snr_db``) is relative to the clip's RMS. ``clip=None`` gives a
    ``_silence_`` example: noise alone at a random level. A clip longer than the window is
    cropped at a random start.
    """
    out = torch.zeros(length)
    if clip is None:
        level = 10 ** (-1 - 2 * torch.rand((), generator=g))  # RMS 0.001..0.1
        return _noise(length, g) * level
    if len(clip) > length:
        start = int(torch.randint(0, len(clip) - length + 1, (), generator=g))
        clip = clip[start : start + length]
    offset = int(torch.randint(0, length - len(clip) + 1, (), generator=g))
    gain = 10 ** (torch.rand((), generator=g) - 0.5)  # 0.3x..3x, then peak-limited
    out[offset : offset + len(clip)] = clip * gain
    rms = out[offset : offset + len(clip)].square().mean().sqrt()
    snr = snr_db[0] + (snr_db[1] - snr_db[0]) * torch.rand((), generator=g)
    out = out + _noise(length, g) * rms * 10 ** (-snr / 20)
    return out / max(1.0, float(out.abs().max()))


# --------------------------------------------------------------------------------------------
# The data set


@dataclass(frozen=True)
class KeywordSettings:
    """Everything that determines the ``keywords-synth`` features (hashed into the cache key).

    Per speaker (voice variant) and word, ``takes`` clips draw an accent, speed and pitch from
    the grid; ``_unknown_`` gets ``unknown_ratio`` and ``_silence_`` ``silence_ratio`` times as
    many clips as one keyword. ``test_voices`` variants (seeded choice) form the test split.
    """

    keywords: tuple[str, ...] = KEYWORDS
    fillers: tuple[str, ...] = FILLERS
    voices: tuple[str, ...] = VOICES
    accents: tuple[str, ...] = ACCENTS
    test_voices: int = 8
    train_takes: int = 24
    test_takes: int = 12
    speeds: tuple[int, ...] = (130, 150, 170, 190, 210)
    pitches: tuple[int, ...] = (20, 35, 50, 65, 80)
    unknown_ratio: float = 1.5
    silence_ratio: float = 1.0
    snr_db: tuple[float, float] = (0.0, 20.0)
    sample_rate: int = 16000
    seconds: float = 1.0
    features: dict[str, Any] = field(
        default_factory=lambda: {"n_fft": 400, "hop": 160, "n_mels": 40, "f_min": 20.0}
    )
    seed: int = 0

    @property
    def labels(self) -> tuple[str, ...]:
        return (*self.keywords, UNKNOWN, SILENCE)

    def input_shape(self) -> tuple[int, int, int]:
        """``(1, n_mels, frames)`` of one example."""
        samples = int(self.sample_rate * self.seconds)
        return (1, self.features["n_mels"], 1 + samples // self.features["hop"])


DEFAULT_SETTINGS = KeywordSettings()


@dataclass(frozen=True)
class Utterance:
    """One clip to make: a word (None for silence) spoken by ``voice`` with espeak settings."""

    label: int
    word: str | None
    voice: str
    accent: str
    speed: int
    pitch: int

    @property
    def espeak_voice(self) -> str:
        return f"{self.accent}+{self.voice}"


def split_voices(settings: KeywordSettings) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(train_voices, test_voices)``: a seeded, disjoint split of the speakers."""
    voices = list(settings.voices)
    if not 0 < settings.test_voices < len(voices):
        raise ValueError(
            f"test_voices must be between 1 and {len(voices) - 1} (the number of voices - 1), "
            f"got {settings.test_voices}"
        )
    order = np.random.default_rng(settings.seed).permutation(len(voices))
    test = {voices[i] for i in order[: settings.test_voices]}
    return tuple(v for v in voices if v not in test), tuple(v for v in voices if v in test)


def utterances(settings: KeywordSettings, train: bool) -> list[Utterance]:
    """The clips of one split, in a fixed order drawn from a seeded grid."""
    train_voices, test_voices = split_voices(settings)
    voices, takes = (
        (train_voices, settings.train_takes) if train else (test_voices, settings.test_takes)
    )
    rng = np.random.default_rng([settings.seed, int(train)])
    unknown, silence = len(settings.keywords), len(settings.keywords) + 1
    out: list[Utterance] = []

    def draw(label: int, word: str | None, voice: str) -> Utterance:
        accent = settings.accents[rng.integers(len(settings.accents))]
        speed = int(settings.speeds[rng.integers(len(settings.speeds))])
        pitch = int(settings.pitches[rng.integers(len(settings.pitches))])
        return Utterance(label, word, voice, str(accent), speed, pitch)

    for voice in voices:
        for label, word in enumerate(settings.keywords):
            out.extend(draw(label, word, voice) for _ in range(takes))
        for _ in range(round(takes * settings.unknown_ratio)):
            word = settings.fillers[rng.integers(len(settings.fillers))]
            out.append(draw(unknown, str(word), voice))
        out.extend(draw(silence, None, voice) for _ in range(round(takes * settings.silence_ratio)))
    return out


def cache_dir(settings: KeywordSettings) -> Path:
    """``cache_root()/data/keywords-synth-<hash>``: where the features of ``settings`` live."""
    from prunekit.recipes._cache import cache_key, cache_root  # lazy: recipes imports data

    parts = {"settings": asdict(settings), "espeak": espeak_version(), "format": _FORMAT}
    return cache_root() / "data" / f"keywords-synth-{cache_key(parts)}"


def _make_features(
    items: Sequence[Utterance], settings: KeywordSettings, seed: int, tick: Callable[[], None]
) -> torch.Tensor:
    """``[len(items), 1, n_mels, frames]`` log-mel features of the synthesised, augmented clips.

    Two espeak-ng processes run at a time; waveforms are turned into features 256 at a time,
    so memory holds the features, not every waveform.
    """
    length = int(settings.sample_rate * settings.seconds)

    def one(i: int) -> torch.Tensor:
        u = items[i]
        clip = None
        if u.word is not None:
            raw = synthesize(
                u.word,
                u.espeak_voice,
                speed=u.speed,
                pitch=u.pitch,
                sample_rate=settings.sample_rate,
            )
            clip = trim_silence(raw)
        # A generator per clip: the result does not depend on thread scheduling.
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        wave_ = augment(clip, length, settings.snr_db, g)
        tick()
        return wave_

    chunks = []
    with ThreadPoolExecutor(max_workers=2) as pool:
        for lo in range(0, len(items), 256):
            waves = torch.stack(list(pool.map(one, range(lo, min(lo + 256, len(items))))))
            chunks.append(log_mel(waves, settings.sample_rate, **settings.features))
    return torch.cat(chunks).unsqueeze(1)


class _Progress:
    """A rich bar on a terminal, one line otherwise; silent when disabled."""

    def __init__(self, enabled: bool, total: int, where: Path) -> None:
        self.bar = None
        self.task = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        console = Console(stderr=True, soft_wrap=True, highlight=False)
        console.print(f"keywords-synth: speaking {total} clips with espeak-ng once; cache {where}")
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]synthesising"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.task = self.bar.add_task("synth", total=total)
            self.bar.start()

    def tick(self) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def build_keywords(settings: KeywordSettings | None = None, *, progress: bool = True) -> Path:
    """Synthesise both splits, compute normalised log-mel features and cache them; the path.

    Features are normalised per mel bin with the training split's mean and std (stored in
    ``meta.json``) and kept as float16 (half the disk; far below the noise that was added).
    A no-op when the cache entry exists. Written atomically: a crash leaves no partial entry.
    """
    from safetensors.torch import save_file

    from prunekit.io._atomic import atomic_directory
    from prunekit.metrics.latency import pinned_threads

    settings = settings or DEFAULT_SETTINGS
    target = cache_dir(settings)
    if (target / "meta.json").is_file():
        return target
    splits = {"train": utterances(settings, True), "test": utterances(settings, False)}
    bar = _Progress(progress, sum(map(len, splits.values())), target)
    # One torch thread: the two workers and their espeak-ng processes already keep the cores
    # busy, and an oversubscribed OpenMP pool spins.
    try:
        with pinned_threads(1):
            feats = {
                name: _make_features(items, settings, seed, bar.tick)
                for seed, (name, items) in enumerate(splits.items())
            }
    finally:
        bar.close()
    mean = feats["train"].mean(dim=(0, 1, 3), keepdim=True)
    std = feats["train"].std(dim=(0, 1, 3), keepdim=True).clamp_min(1e-6)
    meta = {
        "labels": list(settings.labels),
        "input_shape": list(settings.input_shape()),
        "voices": dict(zip(("train", "test"), map(list, split_voices(settings)), strict=True)),
        "counts": {name: len(items) for name, items in splits.items()},
        "mel_mean": mean.flatten().tolist(),
        "mel_std": std.flatten().tolist(),
        "settings": asdict(settings),
        "espeak": espeak_version(),
        "format": _FORMAT,
    }
    try:
        with atomic_directory(target, replaceable=lambda p: False, replaced=set()) as tmp:
            for name, items in splits.items():
                x = ((feats[name] - mean) / std).half().contiguous()
                y = torch.tensor([u.label for u in items], dtype=torch.int64)
                save_file({"x": x, "y": y}, str(tmp / f"{name}.safetensors"))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except ValueError:
        if not (target / "meta.json").is_file():
            raise  # not a concurrent run that finished first
    return target


@functools.lru_cache(maxsize=4)
def _load_split(folder: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / f"{'train' if train else 'test'}.safetensors"))
    return tensors["x"].float(), tensors["y"]


def keyword_tensors(
    train: bool = True, settings: KeywordSettings | None = None, *, progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x [N, 1, 40, 101] float32, y [N] int64)`` of one split of ``keywords-synth``.

    Builds the cache on first use (a few minutes on 2 cores, with a progress bar on stderr),
    then reads it; loaded once per process (copy before editing the tensors in place).
    Labels index :data:`LABELS` (10 keywords, ``_unknown_``, ``_silence_``).
    """
    folder = build_keywords(settings, progress=progress and sys.stderr is not None)
    return _load_split(str(folder), train)
