"""Corpus importers on tiny fixtures in each corpus's own layout, and the speaker-disjoint splitter."""
from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from asr_transfer.audio import load_audio
from asr_transfer.cli import main
from asr_transfer.corpora.commonvoice import prepare_commonvoice
from asr_transfer.corpora.folder import prepare_folder
from asr_transfer.corpora.librispeech import prepare_librispeech
from asr_transfer.corpora.splits import parse_fractions, speaker_overlaps, split_utterances
from asr_transfer.corpora.tabular import prepare_tabular
from asr_transfer.errors import UserError
from asr_transfer.manifest import Utterance, read_manifest
from asr_transfer.validate import validate_manifest

SR = 16_000
GERMAN = [
    "Guten Morgen, wie geht es dir?",
    "Das Wetter ist heute schön.",
    "Ich trinke gern einen Kaffee.",
    "Der Zug fährt um acht Uhr ab.",
    "Wir sehen uns morgen in Berlin.",
    "Die Katze schläft auf dem Sofa.",
]


def tone(seconds: float, freq: float = 220.0, sr: int = SR) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def speak(path: Path, text: str, voice: str = "de") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(path), text], check=True, capture_output=True)


# --- splits -------------------------------------------------------------------------------------------------------


def utts_with_speakers(n_speakers: int, per_speaker: int, seed: int = 0) -> list[Utterance]:
    rng = np.random.default_rng(seed)
    return [
        Utterance(f"/x/{s}_{i}.wav", float(rng.uniform(1.0, 5.0)), "t", speaker=f"spk{s}", id=f"{s}_{i}")
        for s in range(n_speakers)
        for i in range(per_speaker)
    ]


def test_split_is_speaker_disjoint_deterministic_and_near_the_fractions():
    utts = utts_with_speakers(40, 5)
    parts = split_utterances(utts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)
    assert parts == split_utterances(utts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=3)
    assert parts != split_utterances(utts, {"train": 0.8, "dev": 0.1, "test": 0.1}, seed=4)
    assert not speaker_overlaps(parts)
    assert sorted(u.id for p in parts.values() for u in p) == sorted(u.id for u in utts)  # a partition
    total = sum(u.duration for u in utts)
    largest_speaker = max(sum(u.duration for u in utts if u.speaker == s) for s in {u.speaker for u in utts})
    for name, frac in (("train", 0.8), ("dev", 0.1), ("test", 0.1)):
        share = sum(u.duration for u in parts[name])
        assert abs(share - frac * total) <= largest_speaker + 1e-6, name
    # Order within a split is the input order.
    assert [utts.index(u) for u in parts["train"]] == sorted(utts.index(u) for u in parts["train"])


def test_split_few_speakers_still_fills_every_split_and_no_speakers_splits_utterances():
    parts = split_utterances(utts_with_speakers(3, 4), seed=0)
    assert all(len({u.speaker for u in p}) == 1 for p in parts.values())  # 3 speakers → one per split
    no_speaker = [Utterance(f"/x/{i}.wav", 1.0, "t", id=str(i)) for i in range(20)]
    parts = split_utterances(no_speaker, {"train": 0.5, "test": 0.5}, seed=1)
    assert len(parts["train"]) == len(parts["test"]) == 10
    with pytest.raises(UserError):
        split_utterances(no_speaker, {"train": -1.0, "test": 0.5})
    assert parse_fractions("0.8,0.1,0.1") == {"train": 0.8, "dev": 0.1, "test": 0.1}
    assert parse_fractions("train=9,test=1") == {"train": 9.0, "test": 1.0}
    with pytest.raises(UserError):
        parse_fractions("lots")


@settings(max_examples=40, deadline=None)
@given(
    speakers=st.lists(st.sampled_from(["a", "b", "c", "d", "e", None]), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
)
def test_split_property_partition_and_disjoint(speakers, seed):
    utts = [Utterance(f"/x/{i}.wav", 1.0 + (i % 3), "t", speaker=s, id=str(i)) for i, s in enumerate(speakers)]
    parts = split_utterances(utts, seed=seed)
    assert sorted(int(u.id) for p in parts.values() for u in p) == list(range(len(utts)))
    assert not speaker_overlaps(parts)


# --- Common Voice -------------------------------------------------------------------------------------------------

CV_HEADER = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\tlocale"


def make_commonvoice(root: Path, shared_speaker: bool = False) -> Path:
    """A Common Voice language folder: 4 speakers, mp3 clips, validated/train/dev/test TSVs, two broken clips."""
    lang_dir = root / "cv-corpus-99.0" / "de"
    clips = lang_dir / "clips"
    clips.mkdir(parents=True)
    rows = {"train": [], "dev": [], "test": []}
    speakers = {"train": ["c_aaa", "c_bbb"], "dev": ["c_ccc"], "test": ["c_ddd"]}
    if shared_speaker:
        speakers["test"] = ["c_aaa"]
    n = 0
    for split, spks in speakers.items():
        for spk in spks:
            for _ in range(2):
                name = f"common_voice_de_{n:04d}.mp3"
                sf.write(clips / name, tone(1.0 + 0.1 * n, 200 + 20 * n), SR, format="MP3")
                sentence = GERMAN[n % len(GERMAN)] if n != 1 else 'Er sagte "Hallo" und ging.'
                rows[split].append(f"{spk}\t{name}\t{sentence}\t2\t0\tthirties\tfemale\tde")
                n += 1
    (clips / "common_voice_de_9000.mp3").write_text("not an mp3")  # unreadable
    rows["train"].append("c_aaa\tcommon_voice_de_9000.mp3\tKaputt.\t2\t0\t\t\tde")
    rows["train"].append("c_bbb\tcommon_voice_de_9001.mp3\tFehlt.\t2\t0\t\t\tde")  # missing
    rows["dev"].append("c_ccc\tcommon_voice_de_0004.mp3\t\t2\t0\t\t\tde")  # empty sentence
    for split, lines in rows.items():
        (lang_dir / f"{split}.tsv").write_text("\n".join([CV_HEADER, *lines]) + "\n", encoding="utf-8")
    all_rows = [r for lines in rows.values() for r in lines]
    (lang_dir / "validated.tsv").write_text("\n".join([CV_HEADER, *all_rows]) + "\n", encoding="utf-8")
    return lang_dir


def test_commonvoice_official_splits_keep_mp3_and_skip_broken_clips(tmp_path):
    lang_dir = make_commonvoice(tmp_path)
    out = tmp_path / "manifests"
    summary = prepare_commonvoice(lang_dir.parent, out, "de")  # the release folder: finds de/
    assert summary.utterances == {"train": 4, "dev": 2, "test": 2}
    assert summary.skipped == Counter({"unreadable audio": 1, "missing audio": 1, "empty sentence": 1})
    assert not summary.warnings
    train = read_manifest(out / "train.jsonl")
    assert {u.speaker for u in train} == {"c_aaa", "c_bbb"}
    first = train[0]
    assert first.id == "common_voice_de_0000" and first.lang == "de"
    assert Path(first.audio_filepath).resolve() == (lang_dir / "clips" / "common_voice_de_0000.mp3").resolve()
    assert first.duration == pytest.approx(1.0, abs=0.01)
    assert first.extra["gender"] == "female"
    assert train[1].text == 'Er sagte "Hallo" und ging.'  # raw text, bare quotes kept (read without CSV quoting)
    assert load_audio(first.audio_filepath).shape[0] == pytest.approx(SR, abs=50)
    assert validate_manifest(out / "train.jsonl", lang="de").ok
    assert "missing audio: 1" in summary.format()


def test_commonvoice_reports_speakers_shared_between_official_splits(tmp_path, capsys):
    lang_dir = make_commonvoice(tmp_path, shared_speaker=True)
    rc = main(["prepare", "commonvoice", str(lang_dir), "--lang", "de", "--out", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "warning: official splits train and test share 1 speaker(s)" in out
    assert "train" in out and (tmp_path / "m" / "test.jsonl").is_file()
    rc = main(["prepare", "commonvoice", str(lang_dir), "--lang", "de", "--out", str(tmp_path / "m"),
               "--splits", "train", "other"])
    assert rc == 1 and "no other.tsv" in capsys.readouterr().err


# --- folder -------------------------------------------------------------------------------------------------------


def make_folder(root: Path) -> Path:
    """``<speaker>/<utt>.wav`` spoken by espeak-ng with sibling .txt/.lab transcripts, 3 speakers × 2 sentences."""
    for i, sentence in enumerate(GERMAN):
        spk = f"sprecher{i % 3}"
        speak(root / spk / f"satz{i}.wav", sentence)
        ext = ".lab" if i == 4 else ".txt"
        (root / spk / f"satz{i}{ext}").write_text(sentence + "\n", encoding="utf-8")
    speak(root / "sprecher0" / "ohne_text.wav", "Hallo")  # no transcript
    return root


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_folder_import_speaker_disjoint_and_deterministic(tmp_path):
    root = make_folder(tmp_path / "corpus")
    s1 = prepare_folder(root, tmp_path / "a", "de", speaker_from="parent", seed=0)
    s2 = prepare_folder(root, tmp_path / "b", "de", speaker_from="parent", seed=0)
    assert s1.skipped == Counter({"no transcript": 1})
    assert sum(s1.utterances.values()) == 6
    parts = {name: read_manifest(path) for name, path in s1.manifests.items()}
    assert set(parts) == {"train", "dev", "test"}  # 3 speakers, one per split
    assert not speaker_overlaps(parts)
    for name in parts:  # same seed → same split
        assert (tmp_path / "a" / f"{name}.jsonl").read_text().replace(str(tmp_path / "a"), "") == \
            (tmp_path / "b" / f"{name}.jsonl").read_text().replace(str(tmp_path / "b"), "")
    all_utts = {u.id: u for p in parts.values() for u in p}
    assert all_utts["sprecher1/satz4"].text == GERMAN[4]  # the .lab transcript
    assert all_utts["sprecher0/satz0"].duration > 0.5  # real speech, 22.05 kHz from espeak
    assert s2.utterances == s1.utterances

    one = prepare_folder(root, tmp_path / "c", "de", split="test")
    assert list(one.manifests) == ["test"] and one.utterances["test"] == 6
    assert validate_manifest(one.manifests["test"], lang="de").ok


def test_folder_import_without_text_marks_lines_untranscribed_and_train_validate_skip_them(tmp_path, capsys):
    from asr_transfer.text import get_normalizer
    from asr_transfer.training.data import UNTRANSCRIBED_SKIP, SkipCounter, build_examples

    root = tmp_path / "audio"
    for i, seconds in enumerate((0.6, 0.9, 1.2)):
        (root / f"spk{i % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(root / f"spk{i % 2}" / f"clip{i}.wav", tone(seconds), SR)
    (root / "spk0" / "clip0.txt").write_text("ignored with no_text\n", encoding="utf-8")
    (root / "spk1" / "broken.wav").write_bytes(b"RIFF....not audio")
    summary = prepare_folder(root, tmp_path / "out", "de", no_text=True, speaker_from="parent")
    assert list(summary.manifests) == ["untranscribed"] and summary.utterances["untranscribed"] == 3
    assert summary.skipped == Counter({"unreadable audio": 1})
    utts = read_manifest(summary.manifests["untranscribed"])
    assert all(u.text == "" and u.extra["untranscribed"] is True and u.lang == "de" for u in utts)
    assert [(u.id, u.speaker) for u in utts] == [("spk0/clip0", "spk0"), ("spk0/clip2", "spk0"), ("spk1/clip1", "spk1")]

    report = validate_manifest(summary.manifests["untranscribed"], lang="de")
    assert report.ok and report.untranscribed == 3 and "empty_text" not in report.by_kind()
    assert "3 lines" in report.format() and "pseudo-label" in report.format()
    # The same line without the mark is an error: empty text is never silently accepted.
    plain = tmp_path / "out" / "plain.jsonl"
    plain.write_text(summary.manifests["untranscribed"].read_text().replace(', "untranscribed": true', ""))
    assert validate_manifest(plain, lang="de").by_kind() == {"empty_text": 3}

    skips = SkipCounter()
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", "|", *"abcdefghijklmnopqrstuvwxyz"])}
    assert build_examples(summary.manifests["untranscribed"], vocab, get_normalizer("de"), (10, 3, 3, 3, 3, 2, 2),
                          (5, 2, 2, 2, 2, 2, 2), skips=skips) == []
    assert skips.counts == Counter({UNTRANSCRIBED_SKIP: 3})

    assert main(["prepare", "folder", str(root), "--no-text", "--lang", "de", "--out", str(tmp_path / "cli"),
                 "--split", "pool"]) == 0
    assert (tmp_path / "cli" / "pool.jsonl").is_file() and "pool" in capsys.readouterr().out


# --- tabular ------------------------------------------------------------------------------------------------------


def make_table_audio(folder: Path, n: int = 6) -> list[str]:
    names = []
    for i in range(n):
        rel = f"wav/clip{i}.flac"
        (folder / "wav").mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, tone(0.4 + 0.1 * i, 300 + 10 * i), SR)
        names.append(rel)
    return names


def test_tabular_csv_and_tsv_relative_paths_and_column_errors(tmp_path, monkeypatch):
    names = make_table_audio(tmp_path / "data")
    csv_path = tmp_path / "data" / "list.csv"
    csv_path.write_text("file,transcript,who\n" + "".join(
        f'{name},"Satz {i}, mit Komma",spk{i % 3}\n' for i, name in enumerate(names)) + "missing.flac,weg,spk0\n",
        encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # paths are relative to the table, not the cwd
    summary = prepare_tabular(csv_path, tmp_path / "out", "de", path_column="file", text_column="transcript",
                              speaker_column="who", seed=0)
    assert summary.skipped == Counter({"missing audio": 1})
    parts = {k: read_manifest(v) for k, v in summary.manifests.items()}
    assert not speaker_overlaps(parts) and sum(map(len, parts.values())) == 6
    u = next(u for p in parts.values() for u in p if u.id == "wav/clip0")
    assert u.text == "Satz 0, mit Komma" and u.speaker == "spk0" and u.duration == pytest.approx(0.4)

    with pytest.raises(UserError) as err:
        prepare_tabular(csv_path, tmp_path / "out2", "de", text_column="sentence")
    msg = str(err.value)
    assert str(csv_path) in msg and "file, transcript, who" in msg and "'path'" in msg and "'sentence'" in msg

    tsv = tmp_path / "data" / "list.tsv"  # tab-separated with a split column; a bare quote in the text
    tsv.write_text("path\ttext\tsplit\n" + "".join(
        f'{name}\tEr sagte "ja\t{"test" if i < 2 else "train"}\n' for i, name in enumerate(names)), encoding="utf-8")
    summary = prepare_tabular(tsv, tmp_path / "out3", "de", split_column="split")
    assert summary.utterances == {"test": 2, "train": 4}
    assert read_manifest(summary.manifests["test"])[0].text == 'Er sagte "ja'


def test_tabular_cli_missing_column_exits_1(tmp_path, capsys):
    names = make_table_audio(tmp_path, 2)
    table = tmp_path / "t.csv"
    table.write_text("path,text\n" + "".join(f"{n},hallo\n" for n in names))
    assert main(["prepare", "tabular", str(table), "--lang", "de", "--out", str(tmp_path / "o"),
                 "--text-column", "satz"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "path, text" in err and err.count("\n") == 1
    assert main(["prepare", "tabular", str(table), "--lang", "de", "--out", str(tmp_path / "o"),
                 "--fractions", "train=1,test=1"]) == 0
    assert "train" in capsys.readouterr().out


# --- LibriSpeech --------------------------------------------------------------------------------------------------


def make_librispeech(root: Path) -> Path:
    """``LibriSpeech/<subset>/<speaker>/<chapter>/`` with flac + trans.txt; 2 speakers per subset."""
    base = root / "LibriSpeech"
    speaker = 100
    for subset in ("train-clean-5", "dev-clean", "test-clean"):
        for _ in range(2):
            chapter = 7000 + speaker
            folder = base / subset / str(speaker) / str(chapter)
            folder.mkdir(parents=True)
            lines = []
            for k in range(3):
                uid = f"{speaker}-{chapter}-{k:04d}"
                sf.write(folder / f"{uid}.flac", tone(0.5 + 0.05 * k, 180 + speaker % 50), SR)
                lines.append(f"{uid} HELLO WORLD NUMBER {k}")
            if speaker == 100:
                lines.append(f"{speaker}-{chapter}-0099 NO AUDIO FOR THIS LINE")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
            speaker += 1
    return base


def test_librispeech_official_roles_and_per_subset_manifests(tmp_path, capsys):
    base = make_librispeech(tmp_path)
    summary = prepare_librispeech(base, tmp_path / "out")
    assert summary.utterances == {"train": 6, "dev": 6, "test": 6}
    assert summary.skipped == Counter({"missing audio": 1})
    assert set(summary.manifests) == {"train", "dev", "test", "train-clean-5", "dev-clean", "test-clean"}
    dev = read_manifest(summary.manifests["dev"])
    assert dev[0].id == "102-7102-0000" and dev[0].speaker == "102" and dev[0].text == "HELLO WORLD NUMBER 0"
    assert dev[0].lang == "en" and dev[0].audio_filepath.endswith(".flac")
    assert not summary.warnings

    # One subset with no official role (a custom corpus in this layout) is split speaker-disjointly.
    custom = base / "my-corpus"
    shutil.copytree(base / "train-clean-5", custom)
    shutil.copytree(base / "dev-clean", custom, dirs_exist_ok=True)
    shutil.copytree(base / "test-clean", custom, dirs_exist_ok=True)
    assert main(["prepare", "librispeech", str(custom), "--out", str(tmp_path / "custom")]) == 0
    out = capsys.readouterr().out
    assert "skipped 1" in out
    parts = {n: read_manifest(tmp_path / "custom" / f"{n}.jsonl") for n in ("train", "dev", "test")}
    assert not speaker_overlaps(parts) and sum(map(len, parts.values())) == 18

    with pytest.raises(UserError, match="no subset"):
        prepare_librispeech(base, tmp_path / "x", subsets=["train-other-500"])
