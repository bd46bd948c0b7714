"""Write kind's default CNI (kindnet) and storage (local-path) manifests, as `kind build
node-image` writes them into /kind/manifests, from the Go constants of the kind module.

    python3 manifests.py KIND_MODULE_DIR OUT_DIR   prints the images they name, one a line
"""

import re
import sys
from pathlib import Path


def go_consts(source: str) -> dict[str, str]:
    consts: dict[str, str] = {}
    for name, value in re.findall(r'const (\w+) = "([^"]*)"', source):
        consts[name] = value
    for name, body in re.findall(r"const (\w+) = `(.*?)\n`", source, flags=re.S):
        consts[name] = body
    return consts


def expand(body: str, consts: dict[str, str]) -> str:
    # `...` + name + `...` pieces: the raw string is split where a constant is spliced in.
    return re.sub(r"` \+ (\w+) \+ `", lambda m: consts[m.group(1)], body) + "\n"


def main() -> None:
    module, out = Path(sys.argv[1]), Path(sys.argv[2])
    nodeimage = module / "pkg/build/nodeimage"
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for src, const, target in (
        ("const_cni.go", "defaultCNIManifest", "default-cni.yaml"),
        ("const_storage.go", "defaultStorageManifest", "default-storage.yaml"),
    ):
        consts = go_consts((nodeimage / src).read_text())
        text = expand(consts[const], consts)
        (out / target).write_text(text)
        images += re.findall(r"image: (\S+)", text)
    print("\n".join(sorted(set(images))))


if __name__ == "__main__":
    main()
