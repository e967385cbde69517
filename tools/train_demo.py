"""Regenerate the demo kit (data, tiny SD1.5-architecture model, demo LoRAs) from a seed.

Usage: python tools/train_demo.py [--seed 0] [--out lora_syntax/demo/kit] [--quick]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lora_syntax.demo.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
