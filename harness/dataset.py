"""The preprocessed dataset the QSL serves: prompt token ids and reference output lengths."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DatasetMissingError(FileNotFoundError):
    pass


@dataclass
class Dataset:
    input_ids_padded: np.ndarray  # [N, max_input_len] int32, 0-padded
    input_lens: np.ndarray  # [N] int32
    output_lens: np.ndarray  # [N] int32, reference answer lengths (dummy-weight runs)
    path: Path

    @classmethod
    def load(cls, preprocessed_dir: Path, sample_limit: int = 0) -> Dataset:
        files = ("input_ids_padded.npy", "input_lens.npy", "output_lens.npy")
        missing = [f for f in files if not (preprocessed_dir / f).is_file()]
        if missing:
            raise DatasetMissingError(
                f"{preprocessed_dir}: missing {', '.join(missing)}; run `make preprocess_data` "
                "for this benchmark first"
            )
        ids = np.load(preprocessed_dir / "input_ids_padded.npy", mmap_mode="r")
        lens = np.load(preprocessed_dir / "input_lens.npy")
        out = np.load(preprocessed_dir / "output_lens.npy")
        if sample_limit:
            ids, lens, out = ids[:sample_limit], lens[:sample_limit], out[:sample_limit]
        return cls(ids, lens, out, preprocessed_dir)

    def __len__(self) -> int:
        return len(self.input_lens)

    def prompt(self, index: int) -> list[int]:
        return self.input_ids_padded[index, : self.input_lens[index]].tolist()
