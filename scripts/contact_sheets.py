"""Contact sheets of the built-in data: per category, a few crops of each defect kind with their masks.

python scripts/contact_sheets.py --version 2 --out docs/images     # data-v2-<category>.png per category
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from anomalib_rgi.data.textures import build_category, categories, defect_types


def contact_sheet(category_dir: Path, kinds: tuple[str, ...], out: Path, per_kind: int) -> None:
    """Draw ``per_kind`` crops of every kind, each beside its mask, and good crops in the first row."""
    rows = ["good", *kinds]
    columns = 2 * per_kind
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.1 * columns, 1.15 * len(rows)), squeeze=False)
    for row, kind in enumerate(rows):
        paths = sorted((category_dir / "test" / kind).glob("*.png"))[: columns if kind == "good" else per_kind]
        panels = []
        for path in paths:
            panels.append(np.array(Image.open(path).convert("RGB")))
            if kind != "good":
                mask_path = category_dir / "ground_truth" / kind / f"{path.stem}_mask.png"
                panels.append(np.array(Image.open(mask_path).convert("RGB")))
        for column, axis in enumerate(axes[row]):
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(panels):
                axis.imshow(panels[column])
            else:
                axis.axis("off")
        axes[row][0].set_ylabel(kind, fontsize=8)
    figure.suptitle(f"{category_dir.name}: test crops of each defect kind, each beside its mask", fontsize=9)
    figure.tight_layout()
    figure.savefig(out, dpi=80)
    plt.close(figure)


def main() -> None:
    """Build each category of the version (if missing) and draw its contact sheet."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", type=int, default=2, choices=(1, 2))
    parser.add_argument("--root", type=Path, default=Path("datasets/rgi_textures"))
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--per-kind", type=int, default=4)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = args.root / "v2" if args.version == 2 else args.root
    for category in categories(args.version):
        folder = build_category(root, category, version=args.version)
        path = args.out / f"data-v{args.version}-{category}.png"
        contact_sheet(folder, defect_types(category, args.version), path, args.per_kind)
        print(path)


if __name__ == "__main__":
    main()
