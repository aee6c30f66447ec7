"""R-RGI started at the encoder with the closed-form mask against the peers table's RGI and R-RGI.

python docs/results/rrgi-kept-2026-11-26/rrgi_brick.py brick <model.ckpt> validation  (or test)
"""

import json
import sys
import time
from pathlib import Path

from anomalib_rgi import Rgi
from anomalib_rgi.data.textures import load_test_split

sys.path.insert(0, str(Path(__file__).parents[3] / "scripts"))
from sweep_fast import score

GRID = {
    "RGI 200 Adam (default)": {"finetune_steps": 0},
    "R-RGI 200 Adam + 100 ft 1e-4 (peers table)": {"finetune_steps": 100, "finetune_lr": 1e-4},
    "RGI 0 closed form": {"steps": 0, "mask_solver": "closed_form", "finetune_steps": 0},
    "R-RGI 0 closed form + 50 ft 1e-4": {
        "steps": 0,
        "mask_solver": "closed_form",
        "finetune_steps": 50,
        "finetune_lr": 1e-4,
    },
}


def main() -> None:
    """Print one JSON row per setting: pixel AUROC, best dataset Dice, seconds per image."""
    category, checkpoint, half = sys.argv[1:4]
    model = Rgi.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    images, masks = load_test_split("datasets/rgi_textures", category, half=half)
    for name, settings in GRID.items():
        start = time.time()
        row = {"category": category, "half": half, "method": name, **score(model, images, masks, settings, 20)}
        print(json.dumps({**row, "s_per_img": round((time.time() - start) / len(images), 2)}), flush=True)


if __name__ == "__main__":
    main()
