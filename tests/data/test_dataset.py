"""Loading prompt data from local files; errors name the file, row and column."""

import json

import pytest

from rlreason.config.schema import DataConfig
from rlreason.data.dataset import DataError, check_columns, encode_prompt, format_prompt, load_rows, resolve_data
from rlreason.data.sampler import PromptSampler


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_jsonl_parquet_and_directory(tmp_path):
    rows = [{"question": f"q{i}", "gold": str(i), "data_source": "toy"} for i in range(5)]
    jl = write_jsonl(tmp_path / "a.jsonl", rows)
    import datasets

    pq = tmp_path / "pq"
    pq.mkdir()
    datasets.Dataset.from_list(rows).to_parquet(str(pq / "part0.parquet"))
    assert load_rows(jl).rows == rows
    assert load_rows(str(pq)).rows == rows
    assert load_rows(str(pq / "part0.parquet")).rows == rows


def test_missing_column_names_file_row_and_column(tmp_path):
    jl = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b"}])
    with pytest.raises(DataError) as info:
        check_columns(load_rows(jl), ["prompt", "answer"])
    msg = str(info.value)
    assert "train.jsonl" in msg and "row 1" in msg and "'answer'" in msg


def test_missing_file_and_unknown_hub_name_are_clear(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="does not exist"):
        load_rows(str(tmp_path / "nope.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="not a local"):
        load_rows("no-such-org/no-such-dataset")


def test_resolve_data_checks_the_configured_keys(tmp_path):
    jl = write_jsonl(tmp_path / "t.jsonl", [{"question": "2+2", "gold": "4"}])
    train, val = resolve_data(DataConfig(train=jl, prompt_key="question", answer_key="gold"), str(tmp_path), 0)
    assert len(train) == 1 and val is None
    with pytest.raises(DataError, match="'prompt'"):
        resolve_data(DataConfig(train=jl), str(tmp_path), 0)


def test_prompt_template_and_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = DataConfig(prompt_template="Q: {prompt}\nA:")
    assert format_prompt({"prompt": "1+1"}, cfg, tok) == "Q: 1+1\nA:"
    tok.chat_template = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}[assistant]"
    chat = DataConfig(chat_template=True, system_prompt="be brief")
    assert format_prompt({"prompt": "1+1"}, chat, tok) == "[system]be brief[user]1+1[assistant]"
    assert len(encode_prompt("x" * 50, DataConfig(max_prompt_length=8), tok)) == 8


def test_chat_template_missing_is_explained(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(DataError, match="chat template"):
        format_prompt({"prompt": "x"}, DataConfig(chat_template=True), tok)


def test_sampler_covers_each_epoch_and_resumes():
    s = PromptSampler(10, 4, seed=3)
    first = s.next() + s.next() + s.next()[:2]
    assert sorted(first) == list(range(10))
    state = s.state_dict()
    after = [s.next() for _ in range(3)]
    t = PromptSampler(10, 4, seed=3)
    t.load_state_dict(state)
    assert [t.next() for _ in range(3)] == after


def local_dataset_repo(root):
    """A copy of a hub dataset repo with two subsets, as ``huggingface-cli download`` leaves it."""
    (root / "data").mkdir(parents=True)
    for name, rows in {"en": [{"prompt": "1+1", "solution": "2"}], "cn": [{"prompt": "一加一", "solution": "2"}] * 2}.items():
        (root / "data" / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (root / "README.md").write_text(
        "---\nconfigs:\n"
        "- config_name: en\n  data_files:\n  - split: train\n    path: data/en.jsonl\n"
        "- config_name: cn\n  data_files:\n  - split: train\n    path: data/cn.jsonl\n---\n")
    return str(root)


def test_subset_of_a_dataset_with_several(tmp_path):
    repo = local_dataset_repo(tmp_path / "dapo")
    en = load_rows(repo, "train", subset="en")
    assert en.rows == [{"prompt": "1+1", "solution": "2"}] and "(en)" in en.source
    assert len(load_rows(repo, "train", subset="cn")) == 2


def test_unknown_subset_lists_the_subsets(tmp_path):
    repo = local_dataset_repo(tmp_path / "dapo")
    with pytest.raises(DataError, match=r"no subset 'fr' \(data.subset\); its subsets: (en, cn|cn, en)"):
        load_rows(repo, "train", subset="fr")


@pytest.mark.parametrize("name,content,expect", [
    ("empty.jsonl", b"", "empty.jsonl is empty"),
    ("blank.jsonl", b"\n  \n", "blank.jsonl is empty"),
    ("empty.json", b"", "empty.json is empty"),
    ("latin1.jsonl", b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n',
     "latin1.jsonl, line 2: not UTF-8 text (byte 0xe9 at column 16)"),
    ("broken.jsonl", b'{"prompt": "a", "answer": "1"}\n\n{"prompt": "b", "answer": \n',
     "broken.jsonl, line 3: not valid JSON"),
    ("list.jsonl", b'{"prompt": "a", "answer": "1"}\n[1, 2]\n', "list.jsonl, line 2: a JSON list, not an object"),
    ("broken.json", b'[\n {"prompt": "a"},\n {"prompt": }\n]\n', "broken.json, line 3: not valid JSON"),
])
def test_bad_files_name_the_file_and_the_line(tmp_path, name, content, expect):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        load_rows(str(path))
    assert expect in str(info.value)
    directory = tmp_path / "dir"  # the same file inside a data directory
    directory.mkdir()
    (directory / name).write_bytes(content)
    with pytest.raises(DataError, match=expect.split(" ")[0].replace(".", r"\.")):
        load_rows(str(directory))


def test_long_prompts_are_counted_and_shown_as_the_model_sees_them(tiny_model_dir):
    from transformers import AutoTokenizer

    from rlreason.data.dataset import encode_prompts, truncation_note

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cfg = DataConfig(max_prompt_length=16)
    long = "1+" * 50_000 + "1 ="  # a 100k-character prompt
    enc = encode_prompts(["2+2 =", long, "3+4 ="], cfg, tok)
    assert [len(i) for i in enc.ids] == [len(tok.encode("2+2 =")), 16, len(tok.encode("3+4 ="))]
    assert enc.ids[1] == tok.encode(long)[-16:] and enc.truncated == 1 and enc.longest == len(tok.encode(long))
    assert enc.shown[0] == "2+2 =" and enc.shown[1] == "…" + tok.decode(enc.ids[1]) and len(enc.shown[1]) < 40
    note = truncation_note(enc, cfg)
    assert note.startswith("1 of 3 prompts are longer than data.max_prompt_length=16 tokens")
    assert truncation_note(encode_prompts(["2+2 ="], cfg, tok), cfg) is None
