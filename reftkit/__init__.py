"""reftkit: Reinforced Fine-Tuning (ReFT) of causal language models on problems with checkable answers."""

import os as _os

if int(_os.environ.get("RANK", "0")) > 0:  # several processes: only the main one draws progress bars
    _os.environ.setdefault("TQDM_DISABLE", "1")
