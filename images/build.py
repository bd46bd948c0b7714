"""Build the project's images without a Docker engine, into a cache outside the checkout.

    python images/build.py               build what changed; logs go to stderr
    python images/build.py --manifest    the same, then print ONLY the manifest's path

The very Dockerfiles a user builds with ``docker build`` are built here with buildah
(``buildah bud --pull=never --isolation chroot``), then written as OCI archives that the
local cluster imports into its containerd:

- ``docker.io/library/debian:bookworm-slim``, the base, is made locally with debootstrap
  (no registry can be reached) and slimmed the way the official image is;
- the build context of the Python images is a directory of wheels made on the host: the
  project's own wheel and every dependency for the image's platform (CPython 3.11,
  manylinux, this machine's architecture), pinned by constraints.txt;
- ``docker.io/trialsync/pause``, the sandbox image, holds the static binary that
  ``tools/build.sh --node`` compiles.

Everything lives in ``$TRIALSYNC_CACHE/images`` (buildah's storage too). Each archive's name
carries a hash of everything that goes into it (Dockerfile, context files, base image), so
an unchanged input is not rebuilt, and an interrupted build leaves no archive behind. The
manifest (JSON) maps each image to its reference, archive and size.

Needs Linux, root, buildah and debootstrap (``tools/system-deps.sh``). Elsewhere it says
why, prints an empty manifest path and exits 0, unless TRIALSYNC_REQUIRE_CLUSTER=1.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trialsync import contract

REPO = Path(__file__).resolve().parents[1]
BASE_REF = "docker.io/library/debian:bookworm-slim"
#: Bump when the base recipe below changes; the base is rebuilt only then (or when its
#: image is missing), since debootstrap output is not reproducible from one day to the next.
BASE_RECIPE = {
    "revision": 1,
    "suite": "bookworm",
    "variant": "minbase",
    "mirror": os.environ.get("TRIALSYNC_DEBIAN_MIRROR", "http://deb.debian.org/debian"),
    "security": "http://deb.debian.org/debian-security",
}
#: What the official slim images leave out (debuerreotype's slimify list).
SLIM_EXCLUDES = [
    "/usr/share/doc/*",
    "/usr/share/info/*",
    "/usr/share/linda/*",
    "/usr/share/lintian/overrides/*",
    "/usr/share/locale/*",
    "/usr/share/man/*",
    "/usr/share/groff/*",
]
SLIM_INCLUDES = ["/usr/share/doc/*/copyright"]
#: The image's Python: Debian bookworm's CPython 3.11 on glibc 2.36.
PYTHON_VERSION = "3.11"
GLIBC_MINOR = 36
#: The project images' extras: what each one installs.
EXTRAS = {"sidecar": ",".join(contract.IMAGE_EXTRAS), "operator": "operator"}
#: The Ray image (images/ray): a Ray for KubeRay, with trialsync's storage filesystem.
RAY_VERSION = "2.60.0"
RAY_REQUIREMENT = f"ray[default,tune]=={RAY_VERSION}"


class BuildError(RuntimeError):
    """An image could not be built; the message says which step and why."""


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    configured = os.environ.get("TRIALSYNC_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache" / "trialsync"
    return root / "images"


def run(
    argv: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    capture: bool = True,
    quiet: bool = False,
) -> str:
    """Run a command and return its stdout (``capture``), else send stdout to our stderr.
    Its stderr goes to ours unless ``quiet``. Raises BuildError if it fails."""
    done = subprocess.run(
        list(argv),
        stdout=subprocess.PIPE if capture else sys.stderr,
        stderr=subprocess.DEVNULL if quiet else None,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"`{' '.join(argv)}` exited {done.returncode}")
    return str(done.stdout or "")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def digest_of(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise builds sharing the cache (other checkouts on the machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------- buildah


class Buildah:
    """buildah with the project's own storage, so nothing lands in /var/lib/containers."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        policy = cache / "policy.json"
        # Only local images are used; nothing is pulled or verified against a registry.
        policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
        # buildah's network backend creates its config dir (/etc/cni/net.d by default) on
        # the host the first time it builds; keep it in the cache.
        containers_conf = cache / "containers.conf"
        containers_conf.write_text(f'[network]\nnetwork_config_dir = "{cache / "cni"}"\n')
        self.env = {**os.environ, "CONTAINERS_CONF": str(containers_conf)}
        self.global_args = [
            "buildah",
            f"--root={cache / 'storage'}",
            f"--runroot={cache / 'runroot'}",
            "--storage-driver=overlay",
        ]
        self.policy = policy

    def __call__(self, *args: str, capture: bool = True) -> str:
        return run([*self.global_args, *args], capture=capture, env=self.env)

    def attempt(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``buildah *args``, whose failure the caller handles."""
        return subprocess.run(
            [*self.global_args, *args], capture_output=True, text=True, env=self.env, check=False
        )

    def image_config(self, ref: str) -> dict[str, Any] | None:
        done = self.attempt("inspect", "--type", "image", ref)
        if done.returncode != 0:
            return None
        info: dict[str, Any] = json.loads(done.stdout)
        return info


# ---------------------------------------------------------------------------- the base


def ensure_base(buildah: Buildah) -> str:
    """Make ``debian:bookworm-slim`` with debootstrap unless this recipe's is there; its id."""
    key = digest_of(BASE_RECIPE, SLIM_EXCLUDES, SLIM_INCLUDES)
    info = buildah.image_config(BASE_REF)
    if info is not None:
        labels = info.get("OCIv1", {}).get("config", {}).get("Labels") or {}
        if labels.get("io.trialsync.base-recipe") == key:
            return str(info["FromImageID"])
    log(f"making {BASE_REF} with debootstrap (about a minute)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=buildah.cache) as tmp:
        rootfs = Path(tmp) / "rootfs"
        run(
            [
                "debootstrap",
                f"--variant={BASE_RECIPE['variant']}",
                "--components=main",
                str(BASE_RECIPE["suite"]),
                str(rootfs),
                str(BASE_RECIPE["mirror"]),
            ],
            quiet=True,
        )
        slim(rootfs)
        archive = Path(tmp) / "rootfs.tar"
        run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(archive), "."])
        container = buildah("from", f"--signature-policy={buildah.policy}", "scratch").strip()
        try:
            buildah("add", container, str(archive), "/")
            buildah(
                "config",
                "--label",
                f"io.trialsync.base-recipe={key}",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd",
                "bash",
                container,
            )
            buildah("commit", f"--signature-policy={buildah.policy}", container, BASE_REF)
        finally:
            buildah.attempt("rm", container)
    log(f"made {BASE_REF} in {time.monotonic() - started:.0f}s")
    info = buildah.image_config(BASE_REF)
    if info is None:
        raise BuildError(f"{BASE_REF} missing right after it was committed")
    return str(info["FromImageID"])


def slim(rootfs: Path) -> None:
    """What the official slim image does: no docs, man pages or locales, now or from any
    package installed later; apt's lists and caches emptied; the security suite added."""
    dpkg_cfg = rootfs / "etc/dpkg/dpkg.cfg.d/docker"
    dpkg_cfg.write_text(
        "".join(f"path-exclude {p}\n" for p in SLIM_EXCLUDES)
        + "".join(f"path-include {p}\n" for p in SLIM_INCLUDES)
    )
    for pattern in SLIM_EXCLUDES:
        parent = rootfs / pattern.strip("/").removesuffix("/*")
        if parent.is_dir():
            for child in parent.iterdir():
                keep = pattern == "/usr/share/doc/*" and (child / "copyright").exists()
                if keep:
                    for extra in child.iterdir():
                        if extra.name != "copyright":
                            _remove(extra)
                else:
                    _remove(child)
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb '
        '/var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n'
    )
    (rootfs / "etc/apt/apt.conf.d/docker-no-languages").write_text('Acquire::Languages "none";\n')
    suite = BASE_RECIPE["suite"]
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {BASE_RECIPE['mirror']}\nSuites: {suite} {suite}-updates\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {BASE_RECIPE['security']}\nSuites: {suite}-security\n"
        "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    for leftover in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log", "dev", "tmp"):
        d = rootfs / leftover
        if d.is_dir():
            for child in d.iterdir():
                if child.name not in ("partial", "lock"):
                    _remove(child)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- wheels


def platform_tags() -> list[str]:
    """The manylinux tags a wheel may carry to run on the image's glibc."""
    arch = platform.machine()
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)]
    tags += [f"manylinux2014_{arch}", f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    return tags


def project_wheel(out: Path) -> Path:
    """The project's own wheel, built from a clean copy of the tree.

    setuptools reuses a ``build/`` directory left in the source tree, which can carry
    deleted modules into the wheel; a copy has none. SOURCE_DATE_EPOCH makes the wheel's
    bytes (and so the image key) depend on its content only.
    """
    with tempfile.TemporaryDirectory(prefix="trialsync-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(REPO, src, ignore=_not_in_wheel)
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "-w",
                str(out),
                str(src),
            ],
            env={**os.environ, "SOURCE_DATE_EPOCH": "315532800"},
        )
    (wheel,) = out.glob("trialsync-*.whl")
    return wheel


#: Never part of the distribution: left out of the copy the wheel is built from.
_TOP_LEVEL_SKIP = {
    ".git", ".venv", ".cluster", "build", "dist", "tests", "bench", "tools", "images", "demo",
    "docs",
}  # fmt: skip
_ANYWHERE_SKIP = shutil.ignore_patterns("__pycache__", "*.egg-info", ".*_cache")


def _not_in_wheel(directory: str, names: list[str]) -> set[str]:
    skipped = set(_ANYWHERE_SKIP(directory, names))
    if Path(directory) == REPO:
        skipped |= _TOP_LEVEL_SKIP & set(names)
    return skipped


def requirements_of(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        (metadata,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        text = zf.read(metadata).decode()
    return sorted(line for line in text.splitlines() if line.startswith("Requires-Dist:"))


def dependency_wheels(cache: Path, own_wheel: Path) -> Path:
    """Every dependency of the trialsync images for the image's platform, downloaded once
    per set of pins (constraints.txt, images/constraints.txt and the project's
    requirements)."""
    extras = ",".join(sorted(set(EXTRAS.values())))
    return download_wheels(cache, own_wheel, [f"trialsync[{extras}]=={_version()}", "pip"])


def ray_wheels(cache: Path, own_wheel: Path) -> Path:
    """Every dependency of the Ray image: Ray, and trialsync with its own dependencies."""
    return download_wheels(cache, own_wheel, [RAY_REQUIREMENT, f"trialsync=={_version()}", "pip"])


def download_wheels(cache: Path, own_wheel: Path, requirements: list[str]) -> Path:
    """The wheels of ``requirements`` (one of them the project, ``own_wheel``) for the
    images' platform, pinned by the project's constraints, downloaded once per set of
    inputs."""
    constraints = [REPO / "constraints.txt", REPO / "images" / "constraints.txt"]
    key = digest_of(
        [c.read_text() for c in constraints],
        requirements_of(own_wheel),
        requirements,
        PYTHON_VERSION,
        platform_tags(),
    )
    target = cache / "wheels" / key
    if target.is_dir():
        return target
    log(f"downloading the wheels of {', '.join(requirements)}")
    tmp = Path(tempfile.mkdtemp(prefix=".wheels-", dir=cache / "wheels"))
    try:
        shutil.copy2(own_wheel, tmp)
        platforms = [arg for tag in platform_tags() for arg in ("--platform", tag)]
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--dest",
                str(tmp),
                "--find-links",
                str(tmp),
                *[arg for c in constraints for arg in ("-c", str(c))],
                "--only-binary=:all:",
                f"--python-version={PYTHON_VERSION}",
                "--implementation=cp",
                f"--abi=cp{PYTHON_VERSION.replace('.', '')}",
                "--abi=abi3",
                "--abi=none",
                *platforms,
                *requirements,
            ]
        )
        own_wheel_copy = tmp / own_wheel.name
        own_wheel_copy.unlink()  # the project's wheel is added per build, not cached here
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _version() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return str(project["version"])


# ---------------------------------------------------------------------------- images


@dataclass(frozen=True)
class Built:
    name: str
    ref: str
    archive: Path
    #: Uncompressed size of the image's layers, as `docker images` reports it.
    size_bytes: int
    #: Size of the OCI archive (gzip-compressed layers): what a registry would store.
    archive_bytes: int


def build_image(
    buildah: Buildah,
    *,
    name: str,
    ref: str,
    dockerfile: Path,
    context: Path,
    base_id: str | None,
) -> Built:
    """Build ``dockerfile`` with ``context`` unless an archive of the same inputs exists."""
    files = sorted(p for p in context.rglob("*") if p.is_file())
    key = digest_of(
        dockerfile.read_text(),
        [(str(p.relative_to(context)), sha256_file(p)) for p in files],
        base_id,
        ref,
    )
    archives = buildah.cache / "archives"
    archives.mkdir(exist_ok=True)
    archive = archives / f"{name}-{key}.tar"
    meta = archive.with_suffix(".json")
    if archive.exists() and meta.exists():
        os.utime(archive)  # recently used: kept by prune_archives
        return Built(name, ref, archive, int(json.loads(meta.read_text())["size_bytes"]),
                     archive.stat().st_size)  # fmt: skip
    log(f"building {ref} from {dockerfile.relative_to(REPO)}")
    started = time.monotonic()
    build_args = ["--build-arg", f"BASE_IMAGE={BASE_REF}"] if base_id else []
    buildah(
        "bud",
        "--pull=never",
        "--isolation=chroot",
        "--layers",
        f"--signature-policy={buildah.policy}",
        *build_args,
        "-f",
        str(dockerfile),
        "-t",
        ref,
        str(context),
        capture=False,
    )
    tmp = archive.with_name(f".{archive.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        buildah("push", f"--signature-policy={buildah.policy}", ref, f"oci-archive:{tmp}:{ref}")
        size = unpacked_size(tmp)
        meta.write_text(json.dumps({"ref": ref, "size_bytes": size}))
        tmp.rename(archive)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"built {ref} in {time.monotonic() - started:.0f}s: {size / 1e6:.0f} MB")
    return Built(name, ref, archive, size, archive.stat().st_size)


def unpacked_size(archive: Path) -> int:
    """The sum of the image's uncompressed layer sizes, read from an OCI archive (a gzip
    member ends with its uncompressed length mod 2**32; layers here are far smaller)."""
    with tarfile.open(archive) as tar:

        def blob(descriptor: dict[str, str]) -> tarfile.TarInfo:
            algorithm, digest = descriptor["digest"].split(":")
            return tar.getmember(f"blobs/{algorithm}/{digest}")

        def read_json(member: tarfile.TarInfo) -> dict[str, Any]:
            f = tar.extractfile(member)
            assert f is not None
            data: dict[str, Any] = json.load(f)
            return data

        index = read_json(tar.getmember("index.json"))
        manifest = read_json(blob(index["manifests"][0]))
        total = 0
        for layer in manifest["layers"]:
            member = blob(layer)
            if layer["mediaType"].endswith("+gzip"):
                f = tar.extractfile(member)
                assert f is not None
                f.seek(member.size - 4)
                total += struct.unpack("<I", f.read(4))[0]
            else:
                total += member.size
        return total


def pause_binary() -> tuple[Path, str]:
    """The pause binary of tools/build.sh --node, and its version (kubeadm's pin)."""
    bin_dir = Path(run(["bash", str(REPO / "tools" / "build.sh"), "--node", "--bin-dir"]).strip())
    binary = bin_dir / "pause"
    version = run([str(binary), "-v"]).split()[-1]
    return binary, version


def build_all() -> dict[str, Built]:
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "wheels").mkdir(exist_ok=True)
    with locked(cache / ".lock"):
        buildah = Buildah(cache)
        try:
            built = build_images(buildah, cache)
        finally:
            prune_storage(buildah)
        prune_archives(cache, {b.archive for b in built.values()})
        return built


def build_images(buildah: Buildah, cache: Path) -> dict[str, Built]:
    built: dict[str, Built] = {}
    pause, pause_version = pause_binary()
    with tempfile.TemporaryDirectory(prefix="pause-ctx-", dir=cache) as ctx:
        shutil.copy2(pause, Path(ctx) / "pause")
        built["pause"] = build_image(
            buildah,
            name="pause",
            ref=f"docker.io/trialsync/pause:{pause_version}",
            dockerfile=REPO / "images" / "pause" / "Dockerfile",
            context=Path(ctx),
            base_id=None,
        )
    base_id = ensure_base(buildah)
    with tempfile.TemporaryDirectory(prefix="wheels-ctx-", dir=cache) as ctx:
        context = Path(ctx)
        own = project_wheel(context)
        for wheel in dependency_wheels(cache, own).iterdir():
            os.link(wheel, context / wheel.name)
        for name in EXTRAS:
            built[name] = build_image(
                buildah,
                name=name,
                ref=f"docker.io/trialsync/{name}:{_version()}",
                dockerfile=REPO / "images" / name / "Dockerfile",
                context=context,
                base_id=base_id,
            )
    with tempfile.TemporaryDirectory(prefix="ray-ctx-", dir=cache) as ctx:
        context = Path(ctx)
        own = project_wheel(context)
        for wheel in ray_wheels(cache, own).iterdir():
            os.link(wheel, context / wheel.name)
        built["ray"] = build_image(
            buildah,
            name="ray",
            ref=f"docker.io/trialsync/ray:{RAY_VERSION}",
            dockerfile=REPO / "images" / "ray" / "Dockerfile",
            context=context,
            base_id=base_id,
        )
    return built


def prune_storage(buildah: Buildah) -> None:
    """Leave only the base image in buildah's storage.

    Every image is consumed from its archive, so what a build leaves in the storage (its
    tag, its stages, the layers ``--layers`` keeps, a working container of a failed step)
    would only grow it by the size of the images at each change of the sources.
    """
    buildah("rm", "--all")
    base = buildah.image_config(BASE_REF)
    keep = {str(base["FromImageID"])} if base else set()
    for image_id in set(buildah("images", "--all", "--quiet", "--no-trunc").split()):
        if image_id.removeprefix("sha256:") not in keep:
            # Removing an image may have removed its untagged parents already.
            buildah.attempt("rmi", "--force", image_id)


#: Archives no build has used for this long are deleted (other checkouts may still use
#: older ones for a while; a deleted one is rebuilt if it is needed again) ...
ARCHIVE_MAX_AGE_S = 24 * 3600
#: ... and of the others, only the newest few of each image are kept.
ARCHIVES_KEPT_PER_IMAGE = 2


def prune_archives(cache: Path, keep: set[Path]) -> None:
    others: dict[str, list[Path]] = {}
    for archive in (cache / "archives").glob("*.tar"):
        if archive not in keep:
            others.setdefault(archive.name.rsplit("-", 1)[0], []).append(archive)
    for archives in others.values():
        archives.sort(key=lambda a: a.stat().st_mtime, reverse=True)
        for index, archive in enumerate(archives):
            old = time.time() - archive.stat().st_mtime > ARCHIVE_MAX_AGE_S
            if old or index >= ARCHIVES_KEPT_PER_IMAGE:
                archive.unlink(missing_ok=True)
                archive.with_suffix(".json").unlink(missing_ok=True)


def write_wheels(target: Path, ray: bool = False) -> int:
    """The build context of the trialsync images (or with ``ray``, of the Ray image), for
    users who build them with docker."""
    cache = cache_dir()
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    target.mkdir(parents=True, exist_ok=True)
    try:
        with locked(cache / ".lock"):
            own = project_wheel(target)
            wheels = ray_wheels(cache, own) if ray else dependency_wheels(cache, own)
            for wheel in wheels.iterdir():
                shutil.copy2(wheel, target / wheel.name)
    except BuildError as exc:
        log(f"failed: {exc}")
        return 1
    image = "ray" if ray else "sidecar"
    log(f"wheels in {target}: docker build -f images/{image}/Dockerfile ... {target}")
    return 0


def write_manifest(built: dict[str, Built]) -> Path:
    content = {
        name: {
            "ref": b.ref,
            "archive": str(b.archive),
            "size_bytes": b.size_bytes,
            "archive_bytes": b.archive_bytes,
        }
        for name, b in sorted(built.items())
    }
    path = cache_dir() / "manifests" / f"{digest_of(content)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(content, indent=2))
        tmp.rename(path)
    return path


def unsupported_reason() -> str | None:
    if sys.platform != "linux":
        return f"buildah images need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "building images here needs root (buildah --isolation chroot, debootstrap)"
    for tool in ("buildah", "debootstrap"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is missing (run `make system-deps` as root)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--manifest", action="store_true", help="print only the manifest's path on stdout"
    )
    parser.add_argument(
        "--wheels",
        type=Path,
        metavar="DIR",
        help="only write the images' build context (the project's wheel and its dependencies "
        "for the images' platform) into DIR, for `docker build ... DIR`; needs no root",
    )
    parser.add_argument(
        "--ray-wheels",
        type=Path,
        metavar="DIR",
        help="only write the Ray image's build context into DIR",
    )
    args = parser.parse_args(argv)
    if args.wheels:
        return write_wheels(args.wheels)
    if args.ray_wheels:
        return write_wheels(args.ray_wheels, ray=True)
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    reason = unsupported_reason()
    if reason:
        log(f"not building images: {reason}")
        if os.environ.get("TRIALSYNC_REQUIRE_CLUSTER") == "1":
            return 1
        if args.manifest:
            print()
        return 0
    started = time.monotonic()
    try:
        built = build_all()
    except BuildError as exc:
        log(f"failed: {exc}")
        return 1
    manifest = write_manifest(built)
    sizes = ", ".join(f"{b.ref} {b.size_bytes / 1e6:.0f} MB" for b in built.values())
    log(f"ready in {time.monotonic() - started:.1f}s: {sizes}")
    if args.manifest:
        print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
