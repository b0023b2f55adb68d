"""Prompt datasets: local jsonl/json/parquet files or directories, or a Hugging Face hub dataset.

Rows stay plain dicts: the prompt column becomes the model's prompt, the answer column the
rewards' ``ground_truth``, and every column reaches the reward functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from rlreason.config.schema import DataConfig

FILE_KINDS = {".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(ValueError):
    pass


@dataclass
class PromptSet:
    rows: list[dict[str, Any]]
    source: str  # where the rows came from, for error messages

    def __len__(self) -> int:
        return len(self.rows)


def load_rows(spec: str, split: str = "train", subset: Optional[str] = None) -> PromptSet:
    """Read every row of a file, a directory of files, or a hub dataset split.

    ``subset`` names a configuration of a dataset that has several (the hub's "subset", e.g. "en"
    of DAPO-Math-17k-Processed); ``spec`` is then a hub name or a local copy of such a dataset repo.
    """
    import datasets

    datasets.disable_progress_bars()
    if subset is not None:
        ds = _load_subset(datasets, spec, subset, split)
    elif os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if os.path.splitext(f)[1] in FILE_KINDS)
        if not files:
            raise DataError(f"data directory '{spec}' has no {', '.join(FILE_KINDS)} files")
        kinds = {FILE_KINDS[os.path.splitext(f)[1]] for f in files}
        if len(kinds) > 1:
            raise DataError(f"data directory '{spec}' mixes json and parquet files; keep one kind")
        for f in files:
            check_json_file(f)
        ds = datasets.load_dataset(kinds.pop(), data_files=files, split="train")
    elif os.path.splitext(spec)[1] in FILE_KINDS:
        if not os.path.isfile(spec):
            raise DataError(f"data file '{spec}' does not exist (looked at {os.path.abspath(spec)})")
        check_json_file(spec)
        ds = datasets.load_dataset(FILE_KINDS[os.path.splitext(spec)[1]], data_files=spec, split="train")
    else:
        try:
            ds = datasets.load_dataset(spec, split=split)
        except Exception as e:  # the hub raises many types; the message is what matters
            raise DataError(f"cannot load dataset '{spec}' (split '{split}'): it is not a local "
                            f".jsonl/.json/.parquet file or directory, and loading it from the hub failed: {e}") from e
    return PromptSet(rows=[dict(r) for r in ds], source=spec if subset is None else f"{spec} ({subset})")


def check_json_file(path: str) -> None:
    """Name the file and the 1-based line of what ``datasets`` reports without either: an empty file,
    bytes that are not UTF-8, a line of a .jsonl file that is not a JSON object. Parquet files pass."""
    kind = os.path.splitext(path)[1]
    if kind == ".jsonl":
        _check_jsonl(path)
    elif kind == ".json":
        _check_json(path)


def _utf8_lines(path: str):
    """(1-based line number, text) of every line, failing on the first line that is not UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}, line {number}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                                f"{e.start + 1}); save the file as UTF-8") from None


def _check_jsonl(path: str) -> None:
    import json

    rows = 0
    for number, line in _utf8_lines(path):
        if not line.strip():
            continue
        rows += 1
        try:
            row = json.loads(line)
        except ValueError as e:
            raise DataError(f"{path}, line {number}: not valid JSON ({e.msg} at column {e.colno}); "
                            "a .jsonl file holds one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {number}: a JSON {type(row).__name__}, not an object of columns")
    if rows == 0:
        raise DataError(f"{path} is empty: it holds no rows")


def _check_json(path: str) -> None:
    import json

    text = "".join(line for _, line in _utf8_lines(path))
    if not text.strip():
        raise DataError(f"{path} is empty: it holds no rows")
    try:
        json.loads(text)
    except ValueError as e:
        raise DataError(f"{path}, line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None


def _load_subset(datasets, spec: str, subset: str, split: str):
    try:
        names = datasets.get_dataset_config_names(spec)
    except Exception as e:  # the hub raises many types; the message is what matters
        raise DataError(f"cannot read the subsets of dataset '{spec}' (data.subset={subset!r}): {e}") from e
    if subset not in names:
        raise DataError(f"dataset '{spec}' has no subset {subset!r} (data.subset); its subsets: {', '.join(names)}")
    try:
        return datasets.load_dataset(spec, subset, split=split)
    except Exception as e:
        raise DataError(f"cannot load split '{split}' of dataset '{spec}' subset {subset!r}: {e}") from e


def check_columns(data: PromptSet, columns: list[str]) -> None:
    """Fail on the first row missing a needed column, naming the file, row and column."""
    for i, row in enumerate(data.rows):
        for col in columns:
            if row.get(col) is None:
                present = ", ".join(k for k, v in row.items() if v is not None)
                raise DataError(f"{data.source}: row {i} has no column '{col}' (its columns: {present}). "
                                f"Set data.prompt_key / data.answer_key to the right column names.")


def format_prompt(row: dict[str, Any], cfg: DataConfig, tokenizer) -> str:
    """Prompt text: the chat template (system + user turn) or ``prompt_template``."""
    text = str(row[cfg.prompt_key])
    if not cfg.chat_template:
        return cfg.prompt_template.format(prompt=text)
    if getattr(tokenizer, "chat_template", None) is None:
        raise DataError("data.chat_template=true but the tokenizer has no chat template; "
                        "set data.chat_template=false and use data.prompt_template")
    messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else [])
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_token_ids(text: str, cfg: DataConfig, tokenizer) -> list[int]:
    """Every token of the prompt (a chat template already holds the special tokens it wants)."""
    return tokenizer.encode(text, add_special_tokens=not cfg.chat_template)


def encode_prompt(text: str, cfg: DataConfig, tokenizer) -> list[int]:
    return prompt_token_ids(text, cfg, tokenizer)[-cfg.max_prompt_length:]


@dataclass
class EncodedPrompts:
    ids: list[list[int]]  # token ids of each prompt, left-truncated to data.max_prompt_length
    shown: list[str]  # each prompt as the model sees it (for samples.jsonl): truncated ones start with "…"
    truncated: int  # how many were cut
    longest: int  # tokens in the longest prompt before cutting


def encode_prompts(texts: list[str], cfg: DataConfig, tokenizer) -> EncodedPrompts:
    """Encode every prompt, counting those cut to ``data.max_prompt_length`` (kept: their last tokens)."""
    out = EncodedPrompts([], [], 0, 0)
    for text in texts:
        ids = prompt_token_ids(text, cfg, tokenizer)
        out.longest = max(out.longest, len(ids))
        cut = len(ids) > cfg.max_prompt_length
        out.ids.append(ids[-cfg.max_prompt_length:])
        out.truncated += cut
        out.shown.append("…" + tokenizer.decode(out.ids[-1]) if cut else text)
    return out


def truncation_note(enc: EncodedPrompts, cfg: DataConfig) -> Optional[str]:
    if not enc.truncated:
        return None
    return (f"{enc.truncated} of {len(enc.ids)} prompts are longer than data.max_prompt_length="
            f"{cfg.max_prompt_length} tokens (the longest: {enc.longest}) and were left-truncated to their last "
            f"{cfg.max_prompt_length}; samples.jsonl shows them as the model sees them")


def resolve_data(cfg: DataConfig, run_dir: str, seed: int) -> tuple[PromptSet, Optional[PromptSet]]:
    """Train and optional validation rows, generating them first for procedural tasks."""
    train, val = cfg.train, cfg.val
    if not train:
        from rlreason.registry import load_callable

        paths = load_callable(cfg.generator)(os.path.join(run_dir, "data"), seed=seed, **cfg.generator_kwargs)
        train, val = paths["train"], val or paths.get("val")
    train_set = load_rows(train, cfg.split, cfg.subset)
    if len(train_set) == 0:
        raise DataError(f"{train_set.source}: the training set is empty")
    check_columns(train_set, [cfg.prompt_key, cfg.answer_key])
    val_set = load_rows(val, "validation") if val else None
    if val_set is not None:
        check_columns(val_set, [cfg.prompt_key, cfg.answer_key])
    return train_set, val_set
