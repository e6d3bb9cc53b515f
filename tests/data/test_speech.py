"""prunekit.data._speech: log-mel features, WAV and resampling, the keywords-synth data set."""

from __future__ import annotations

import io
import math
import shutil
import struct
import wave
from pathlib import Path

import pytest
import torch

import prunekit.data as pkd
from prunekit.data import DatasetNotFoundError
from prunekit.data import _speech as speech

SR = 16000


def _tone(freq: float, seconds: float = 1.0, rate: int = SR) -> torch.Tensor:
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return torch.sin(2 * math.pi * freq * t).float()


def _wav_bytes(samples: torch.Tensor, rate: int, channels: int = 1) -> bytes:
    pcm = (samples.clamp(-1, 1) * 32767).round().short()
    if channels > 1:
        pcm = pcm[:, None].repeat(1, channels)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.numpy().tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# features


@pytest.mark.parametrize("m", [3, 10, 20, 30, 38])
def test_log_mel_of_a_tone_peaks_in_the_filter_centred_on_it(m: int) -> None:
    centres = speech.mel_to_hz(torch.linspace(speech.hz_to_mel(20.0), speech.hz_to_mel(8000), 42))
    freq = float(centres[m + 1])  # the centre of filter m
    features = speech.log_mel(_tone(freq))
    assert features.shape == (40, 101)
    assert int(features.mean(dim=1).argmax()) == m
    # Far from the tone there is (almost) nothing: 1e-6 floor plus window leakage.
    assert features[m].mean() - features[(m + 20) % 40].mean() > 8


@pytest.mark.parametrize("freq", [1000.0, 2480.0, 6000.0])
def test_log_mel_of_a_tone_peaks_in_the_filter_holding_its_frequency(freq: float) -> None:
    fb = speech.mel_filterbank(40, 400, SR)
    expected = int(fb[:, round(freq * 400 / SR)].argmax())  # on FFT bins (40 Hz apart)
    assert int(speech.log_mel(_tone(freq)).mean(dim=1).argmax()) == expected


@pytest.mark.parametrize("samples", [16000, 8000, 12345])
def test_log_mel_shapes_follow_the_frames_formula(samples: int) -> None:
    batch = torch.randn(3, samples, generator=torch.Generator().manual_seed(0)) * 0.1
    out = speech.log_mel(batch, n_mels=32, hop=160)
    assert out.shape == (3, 32, 1 + samples // 160)
    assert speech.log_mel(batch[0]).shape == (40, 1 + samples // 160)
    assert torch.allclose(speech.log_mel(batch[1]), speech.log_mel(batch)[1], atol=1e-4)
    # Silence hits the floor log(1e-6), not -inf.
    assert torch.allclose(speech.log_mel(torch.zeros(SR)), torch.tensor(math.log(1e-6)))
    with pytest.raises(ValueError, match=r"\[S\] or \[N, S\]"):
        speech.log_mel(torch.zeros(1, 1, SR))


def test_filterbank_rows_are_triangles_that_sum_to_one_inside() -> None:
    n_fft, n_mels = 512, 24
    fb = speech.mel_filterbank(n_mels, n_fft, SR, f_min=100.0, f_max=7000.0)
    assert fb.shape == (n_mels, n_fft // 2 + 1) and (fb >= 0).all()
    centres = speech.mel_to_hz(torch.linspace(speech.hz_to_mel(100.0), speech.hz_to_mel(7000), 26))
    freqs = torch.arange(n_fft // 2 + 1) * SR / n_fft
    for m in range(n_mels):
        row = fb[m]
        support = (freqs > centres[m]) & (freqs < centres[m + 2])
        assert (row[~support] == 0).all()  # zero outside its two neighbours' centres
        peak = int(row.argmax())
        assert (row[: peak + 1].diff() >= 0).all() and (row[peak:].diff() <= 0).all()
        assert row.max() > 0.5
    inside = (freqs >= centres[1]) & (freqs <= centres[-2])
    assert torch.allclose(fb[:, inside].sum(0), torch.ones(int(inside.sum())), atol=1e-5)
    assert fb[:, freqs > 7000].sum() == 0
    with pytest.raises(ValueError, match="f_max"):
        speech.mel_filterbank(40, 400, SR, f_max=9000)


def test_mel_scale_round_trip_and_htk_anchor() -> None:
    hz = torch.tensor([0.0, 700.0, 1000.0, 8000.0])
    assert torch.allclose(speech.mel_to_hz(speech.hz_to_mel(hz)), hz.double())
    assert abs(float(speech.hz_to_mel(700.0)) - 2595 * math.log10(2)) < 1e-9


# ---------------------------------------------------------------------------------------------
# WAV and resampling


def test_read_wav_mono_stereo_and_placeholder_length() -> None:
    sine = 0.5 * _tone(440.0, 0.1, 22050)
    samples, rate = speech.read_wav(_wav_bytes(sine, 22050))
    assert rate == 22050 and samples.shape == sine.shape
    assert (samples - sine).abs().max() < 2 / 32768
    stereo, _ = speech.read_wav(_wav_bytes(sine, 22050, channels=2))
    assert torch.allclose(stereo, samples)
    # espeak-ng --stdout cannot seek back: its header claims 0x7ffff000 frames.
    data = bytearray(_wav_bytes(sine, 22050))
    pos = data.index(b"data") + 4
    data[pos : pos + 4] = struct.pack("<I", 0x7FFFF000)
    data[4:8] = struct.pack("<I", 0x7FFFFFFF)
    streamed, _ = speech.read_wav(bytes(data))
    assert torch.equal(streamed, samples)
    with pytest.raises(ValueError, match="WAV"):
        speech.read_wav(b"not a wav file at all")


def test_resample_keeps_tones_and_removes_what_would_alias() -> None:
    x = _tone(1000.0, 1.0, 22050)
    y = speech.resample(x, 22050, SR)
    assert y.shape == (SR,)
    assert (y - _tone(1000.0))[300:-300].abs().max() < 5e-3  # edges see the zero padding
    # 10 kHz is above the new Nyquist (8 kHz): removed instead of folding to 6 kHz.
    high = speech.resample(_tone(10000.0, 1.0, 22050), 22050, SR)
    assert high[300:-300].abs().max() < 0.02
    up = speech.resample(_tone(500.0, 0.5, SR), SR, 22050)
    assert up.shape == (11025,) and (up - _tone(500.0, 0.5, 22050))[300:-300].abs().max() < 5e-3
    batch = torch.stack([x, -x])
    assert torch.allclose(speech.resample(batch, 22050, SR)[1], -y, atol=1e-6)


def test_trim_and_augment_place_the_word_in_the_window() -> None:
    clip = torch.cat([torch.zeros(2000), 0.5 * _tone(700.0, 0.3), torch.zeros(3000)])
    trimmed = speech.trim_silence(clip, margin=0)
    assert torch.equal(trimmed, clip[2001:6800])  # sin(0) = 0 is below the threshold
    assert len(speech.trim_silence(clip, margin=160)) == 4799 + 320
    out_a = speech.augment(trimmed, SR, (30.0, 30.0), torch.Generator().manual_seed(1))
    out_b = speech.augment(trimmed, SR, (30.0, 30.0), torch.Generator().manual_seed(1))
    assert out_a.shape == (SR,) and torch.equal(out_a, out_b)
    assert out_a.abs().max() <= 1.0
    loud = torch.nonzero(out_a.abs() > 0.1).flatten()
    assert 4000 < int(loud[-1] - loud[0]) < 4800  # the word, shifted, with quiet noise around
    silence = speech.augment(None, SR, (0.0, 20.0), torch.Generator().manual_seed(2))
    assert silence.shape == (SR,) and 1e-4 < float(silence.square().mean().sqrt()) < 0.2


# ---------------------------------------------------------------------------------------------
# the data set

TINY = speech.KeywordSettings(
    keywords=("yes", "no", "up"),
    fillers=("cat", "dog"),
    voices=("m1", "m2", "f1", "f2"),
    accents=("en", "en-us"),
    test_voices=1,
    train_takes=3,
    test_takes=2,
    snr_db=(20.0, 30.0),
)


def _fake_freq(word: str) -> float:
    return 300.0 + 400.0 * (sum(map(ord, word)) % 15)  # one tone per word


def _fake_synthesize(calls: list[str]):
    def fake(word: str, voice: str = "en", *, speed=160, pitch=50, sample_rate=SR):
        calls.append(word)
        return torch.cat([torch.zeros(800), 0.3 * _tone(_fake_freq(word), 0.4, sample_rate)])

    return fake


@pytest.fixture
def fake_espeak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(speech, "synthesize", _fake_synthesize(calls))
    monkeypatch.setattr(speech, "espeak_version", lambda: "fake espeak")
    return calls


def test_test_speakers_never_train() -> None:
    settings = speech.KeywordSettings(test_voices=8)
    train, test = speech.utterances(settings, True), speech.utterances(settings, False)
    train_voices, test_voices = {u.voice for u in train}, {u.voice for u in test}
    assert not train_voices & test_voices
    assert train_voices | test_voices == set(settings.voices) and len(test_voices) == 8
    assert speech.utterances(settings, False) == test  # seeded
    counts = torch.bincount(torch.tensor([u.label for u in train]), minlength=12)
    assert counts[:10].eq(24 * 32).all() and counts[10] == 36 * 32 and counts[11] == 24 * 32
    assert {u.word for u in train if u.label == 10} <= set(speech.FILLERS)
    assert all(u.word is None for u in train if u.label == 11)
    other = speech.split_voices(speech.KeywordSettings(seed=1))[1]
    assert set(other) != test_voices  # the split follows the seed
    with pytest.raises(ValueError, match="test_voices"):
        speech.split_voices(speech.KeywordSettings(test_voices=0))


def test_cache_round_trip(tmp_path: Path, fake_espeak: list[str]) -> None:
    path = speech.build_keywords(TINY, progress=False)
    assert path.parent == tmp_path / "cache" / "data"
    assert path.name.startswith("keywords-synth-")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind
    n_spoken = len(fake_espeak)
    x, y = speech.keyword_tensors(True, TINY, progress=False)
    xt, yt = speech.keyword_tensors(False, TINY, progress=False)
    # Per training voice: 3 takes of 3 keywords, round(1.5 * 3) = 4 unknown, 3 silence.
    assert x.shape == (3 * (3 * 3 + 4 + 3), 1, 40, 101) and x.dtype == torch.float32
    assert xt.shape[0] == 1 * (2 * 3 + 3 + 2) and yt.max() == 4
    assert torch.bincount(y).tolist() == [9, 9, 9, 12, 9]
    # Normalised per mel bin with the training statistics.
    assert (
        x.mean(dim=(0, 1, 3)).abs().max() < 0.05 and (x.std(dim=(0, 1, 3)) - 1).abs().max() < 0.05
    )
    # Built once: a second build speaks nothing, and other settings get another entry.
    assert speech.build_keywords(TINY, progress=False) == path and len(fake_espeak) == n_spoken
    assert speech.cache_dir(speech.KeywordSettings(seed=5)) != path
    # Labels line up with the audio: each keyword's tone (see _fake_synthesize) lights its mel
    # filter in that keyword's examples more than in any other class, in both splits.
    fb = speech.mel_filterbank(40, 400, SR)
    for c, word in enumerate(TINY.keywords):
        m = int(fb[:, round(_fake_freq(word) * 400 / SR)].argmax())
        for feats, labels in ((x, y), (xt, yt)):
            peak = feats[:, 0, m, :].amax(-1)  # [N]
            per_class = torch.stack([peak[labels == k].mean() for k in range(5)])
            assert int(per_class.argmax()) == c


def test_loaders_by_name(fake_espeak: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech, "DEFAULT_SETTINGS", TINY)
    monkeypatch.setattr(speech, "keyword_tensors", _quiet(speech.keyword_tensors))
    train, test = pkd.loaders("keywords-synth", batch_size=4)
    xb, yb = next(iter(train))
    assert xb.shape == (4, 1, 40, 101) and yb.dtype == torch.int64
    assert len(test.inputs) == 11
    assert pkd.dataset_info("keywords_synth") == {"input_shape": (1, 40, 101), "num_classes": 12}
    assert speech.DEFAULT_SETTINGS.input_shape() == (1, 40, 101)


def _quiet(fn):
    return lambda train=True, settings=None, progress=True: fn(train, settings, progress=False)


def test_missing_espeak_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with pytest.raises(DatasetNotFoundError, match="apt-get install espeak-ng"):
        speech.synthesize("yes")


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs Debian espeak-ng")
def test_real_espeak_synthesis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    clip = speech.synthesize("yes", "en+m1", speed=160, pitch=50)
    word = speech.trim_silence(clip)
    assert 0.15 * SR < len(word) < 0.9 * SR and word.abs().max() > 0.05
    settings = speech.KeywordSettings(
        keywords=("yes", "no"),
        fillers=("cat",),
        voices=("m1", "f1"),
        test_voices=1,
        train_takes=1,
        test_takes=1,
        unknown_ratio=1.0,
    )
    x, y = speech.keyword_tensors(True, settings, progress=False)
    assert x.shape == (4, 1, 40, 101) and y.tolist() == [0, 1, 2, 3]
    assert torch.isfinite(x).all()
