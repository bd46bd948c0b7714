#!/usr/bin/env bash
# Fetch and build the tests' HDFS (localcluster/hdfs/: MiniHdfs.java on Hadoop's
# MiniDFSCluster) into a cache outside the checkout:
#
#   ${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/hdfs/<key>/lib/      the jars of pom.xml
#                                                           classes/  MiniHdfs.class
#
# The jars come from Maven Central (`mvn dependency:copy-dependencies`, about 105 MB, through
# Maven's own ~/.m2 repository); javac compiles MiniHdfs.java against them. <key> hashes
# pom.xml, MiniHdfs.java, this script and the JDK's version, so a change to any of them builds
# a new directory and an unchanged tree reuses the old one: a warm run is one hash, under
# half a second. Old keys are not removed. The build goes to a temporary directory that is renamed into place only
# when complete, so an interrupted build leaves nothing half-built behind.
#
# Usage:
#   bash tools/hdfs.sh          build if needed; logs go to stderr
#   bash tools/hdfs.sh --dir    build if needed, then print ONLY the <key> directory
#
# Needs a JDK >= 11 (java, javac) and Maven (mvn): Debian's openjdk-17-jdk-headless and
# maven (tools/system-deps.sh installs them). Without them it says so and exits 0 (1 under
# CI, TRIALSYNC_REQUIRE_CLUSTER=1), or 3 with --dir, which localcluster/hdfs_server.py turns
# into a skip of the HDFS tests (a failure under CI).
set -euo pipefail

print_dir=0
for arg in "$@"; do
    case "$arg" in
        --dir) print_dir=1 ;;
        -h | --help)
            awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"
            exit 0
            ;;
        *)
            echo "hdfs.sh: unknown argument: $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

# Everything below logs to stderr so that --dir's stdout is exactly one path.
exec 3>&1 1>&2

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$repo/localcluster/hdfs"
cache_root="${TRIALSYNC_CACHE:-$HOME/.cache/trialsync}/hdfs"

for tool in java javac mvn; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "hdfs.sh: '$tool' is not on PATH; the tests' HDFS needs a JDK (java, javac) and" \
            "Maven: apt-get install openjdk-17-jdk-headless maven" >&2
        # `make tools` goes on (the HDFS tests skip) unless this is CI, where they must run.
        [[ $print_dir == 1 ]] && exit 3
        [[ "${TRIALSYNC_REQUIRE_CLUSTER:-0}" == 1 ]] && exit 1
        exit 0
    fi
done

key="$(
    {
        cat "$src/pom.xml" "$src/MiniHdfs.java" "$repo/tools/hdfs.sh"
        javac -version 2>&1
    } | sha256sum | cut -c1-16
)"
key_dir="$cache_root/$key"

if [[ ! -f "$key_dir/classes/MiniHdfs.class" ]]; then
    mkdir -p "$cache_root"
    # Serialise concurrent builds (two checkouts sharing the cache).
    exec 9>"$cache_root/.lock"
    flock 9
    if [[ ! -f "$key_dir/classes/MiniHdfs.class" ]]; then
        rm -rf "$cache_root"/.build.*
        tmp="$(mktemp -d "$cache_root/.build.XXXXXX")"
        trap 'rm -rf "$tmp"' EXIT
        echo "hdfs.sh: resolving the HDFS jars from Maven Central (pom.xml) into $key_dir" >&2
        mvn -B -q -Dstyle.color=never -f "$src/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp/lib" >&2
        javac -nowarn -d "$tmp/classes" -cp "$tmp/lib/*" "$src/MiniHdfs.java" >&2
        chmod 755 "$tmp"
        rm -rf "$key_dir"
        mv "$tmp" "$key_dir"
        trap - EXIT
        echo "hdfs.sh: built $key_dir" >&2
    fi
fi

if [[ $print_dir == 1 ]]; then
    echo "$key_dir" >&3
fi
